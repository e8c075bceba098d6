# The LLM image: Debian 12 (Python 3.11) with Ray Serve LLM — `ray[llm]`, i.e. vLLM with its own CUDA torch —
# every package pinned by ray-llm.constraints.txt. It runs the knowledge LLM's RayService (components/llm),
# whose weights come from the models volume (never from the Hub: HF_HUB_OFFLINE=1 in the manifests).
# torch 2.13's CUDA wheels need an NVIDIA driver >= 580 on the GPU node. Non-root (uid 1000), no compilers.
# One stage (vLLM's venv is ~10 GB: a second stage would copy it). Not part of the default `make images`:
#   python -m deploy.images --only ray-llm     (or: docker build -f deploy/images/ray-llm.Dockerfile .)
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray ray
COPY deploy/images/ray-llm.constraints.txt /opt/reaseq/ray-llm.constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip python3 -m venv /opt/reaseq/venv \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/reaseq/venv/bin/pip install -q \
       --disable-pip-version-check -c /opt/reaseq/ray-llm.constraints.txt "ray[llm]==2.60.0"
ENV PATH=/opt/reaseq/venv/bin:$PATH \
    HOME=/home/ray \
    HF_HUB_OFFLINE=1
USER 1000:100
WORKDIR /home/ray
