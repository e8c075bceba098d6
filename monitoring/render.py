"""Plot a dashboard's panels from a Prometheus: the same PromQL as the Grafana JSON, one subplot per panel.

`python -m monitoring.render --prometheus http://127.0.0.1:9090 --start T0 --end T1 --out docs/x.png`
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# Grafana's interval variables, fixed for a plot of a short local run
GRAFANA_VARS = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "5m"}


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """Prometheus /api/v1/query_range: a list of {metric, values}."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or str(labels)


def render(prometheus: str, dashboard: dict[str, Any], start: float, end: float, out: Path,
           step: float = 2.0, columns: int = 3) -> dict[str, int]:
    """Write a PNG of every panel; returns {panel title: series plotted}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 2.8 * rows), squeeze=False)
    plotted: dict[str, int] = {}
    for ax, panel in zip(axes.flat, panels, strict=False):
        count = 0
        for target in panel["targets"]:
            for series in query_range(prometheus, target["expr"], start, end, step):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=legend(target.get("legendFormat", ""), series["metric"]))
                count += 1
        plotted[panel["title"]] = count
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel("" if unit == "short" else unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, end - start)
        if count:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{dashboard['title']} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(start))}, "
                 f"{end - start:.0f} s", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return plotted


def main() -> None:
    from monitoring.dashboards import all_dashboards

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--dashboard", default="reaseq-pipeline")
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--end", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(render(args.prometheus, all_dashboards()[args.dashboard], args.start, args.end, args.out))


if __name__ == "__main__":
    main()
