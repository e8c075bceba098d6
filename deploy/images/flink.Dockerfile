# The Flink image: Debian 12 (Python 3.11, OpenJDK 17) with PyFlink's own Flink distribution as FLINK_HOME,
# this project in a venv, the Kafka connector and glue jars (pinned by streaming/jvm/pom.xml) in
# FLINK_HOME/lib, Flink's S3 filesystem plugin and the Prometheus reporter PyFlink ships in FLINK_HOME/plugins.
# No torch: the job never runs a model. Non-root (uid 9999), no compilers or Maven in the runtime stage; nothing
# is downloaded at start, and nothing in the image is written at run time: the pods run with a read-only root
# filesystem and emptyDir volumes for /tmp, FLINK_HOME/log and FLINK_HOME/artifacts (base/flink).
# Build from the repository root: `make images` (buildah, here), or
#   docker build -f deploy/images/flink.Dockerfile -t reaseq-flink:latest .
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv openjdk-17-jdk-headless maven ca-certificates \
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
       apache-flink pyyaml numpy kafka-python prometheus-client tqdm pydantic \
    && /opt/reaseq/venv/bin/pip install -q --disable-pip-version-check --no-deps .
# connector + glue jars into FLINK_HOME/lib, the S3 plugin into its own folder under FLINK_HOME/plugins, where
# Flink loads it at start (copying it there at start would need a writable image) (Maven: build stage only)
RUN --mount=type=cache,target=/root/.m2 flink_home=/opt/reaseq/venv/lib/python3.11/site-packages/pyflink \
    && REASEQ_CACHE_DIR=/tmp/reaseq-cache /opt/reaseq/venv/bin/python -m streaming.jvm_deps \
       --copy-connector-to "$flink_home/lib" --s3-plugin-to "$flink_home/plugins/s3-fs-presto" \
    && rm -rf /tmp/reaseq-cache

FROM ${BASE}
# libpython3.11: in thread mode the TaskManager's JVM loads the interpreter as a shared library (pemja)
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libpython3.11 openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 9999 flink \
    && useradd --system --uid 9999 --gid flink --home-dir /opt/flink --no-create-home flink
COPY --from=build /opt/reaseq/venv /opt/reaseq/venv
COPY deploy/images/flink-entrypoint.sh /docker-entrypoint.sh
# /opt/flink as in Flink's own images (the operator's defaults point there). Owned by root: at run time the
# flink user writes only to volumes — log/, artifacts/ (where application mode copies the job's jar,
# user.artifacts.base-dir) and /tmp (io.tmp.dirs: RocksDB, blobs, Python) — and the operator mounts conf/
RUN ln -s /opt/reaseq/venv/lib/python3.11/site-packages/pyflink /opt/flink \
    && mkdir -p /opt/flink/artifacts /opt/flink/usrlib /opt/flink/log
# PYTHONPATH: in thread mode the job's Python runs inside the TaskManager's JVM (pemja), which does not
# read the venv's site-packages on its own (pemja and this project live there)
# JAVA_HOME: Flink's scripts export it (empty when unset), and PyFlink then looks for "bin/java" relative to it
# when the job's Python needs a gateway in the TaskManager (state TTL settings) — set, as in Flink's own images
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    FLINK_HOME=/opt/flink \
    PATH=/opt/reaseq/venv/bin:/opt/flink/bin:$PATH \
    PYTHONPATH=/opt/reaseq/venv/lib/python3.11/site-packages
USER 9999:9999
WORKDIR /opt/flink
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["bash"]
