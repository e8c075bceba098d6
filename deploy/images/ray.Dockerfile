# The Ray image: Debian 12 (Python 3.11) with Ray Serve, torch and this project in a venv, and the trained
# ranker and behaviour artifacts baked in under /opt/reaseq/artifacts (REASEQ_ARTIFACTS_DIR): a Serve replica
# starts from what the image holds, with no dataset and no network.
# torch is PyPI's build (2.11.0, CUDA 13.0 runtime inside the wheels' nvidia-* packages): on a GPU node it
# needs an NVIDIA driver >= 580; the base image itself carries no CUDA. Non-root (uid 1000, as the
# RayService runs it); no compilers in the runtime stage.
# Build from the repository root after training (`make demo`, or `reaseq train ranker` and
# `reaseq train behavior`): `make images` (buildah, here), or
#   docker build -f deploy/images/ray.Dockerfile -t reaseq-ray:latest .
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# pip trusts the system store (Debian's CAs and any the base adds), not only its own bundle
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY reaseq reaseq
COPY streaming streaming
COPY inference inference
COPY ranking ranking
COPY monitoring monitoring
COPY bench bench
RUN --mount=type=cache,target=/root/.cache/pip python3 -m venv /opt/reaseq/venv \
    && /opt/reaseq/venv/bin/pip install -q --disable-pip-version-check -c constraints.txt \
       "ray[serve]" torch numpy pandas scipy pyyaml tqdm pydantic prometheus-client kafka-python \
    && /opt/reaseq/venv/bin/pip install -q --disable-pip-version-check --no-deps .

FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray ray
COPY --from=build /opt/reaseq/venv /opt/reaseq/venv
COPY artifacts/ranker /opt/reaseq/artifacts/ranker
COPY artifacts/behavior /opt/reaseq/artifacts/behavior
ENV REASEQ_ARTIFACTS_DIR=/opt/reaseq/artifacts \
    PATH=/opt/reaseq/venv/bin:$PATH \
    HOME=/home/ray
USER 1000:100
WORKDIR /home/ray
