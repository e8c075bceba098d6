# The Flink image: Flink 2.3 on Java 17, a Python 3.11 venv with PyFlink and this project (no torch: the job
# never runs a model), and the Kafka connector + glue jars resolved from streaming/jvm/pom.xml.
# Build from the repository root:
#   docker build -f deploy/images/flink.Dockerfile -t reaseq-flink:latest .
ARG FLINK_IMAGE=flink:2.3.0-java17

FROM maven:3.9-eclipse-temurin-17 AS jars
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY reaseq reaseq
COPY streaming streaming
COPY inference inference
COPY ranking ranking
COPY monitoring monitoring
COPY bench bench
RUN python3 -m venv /opt/reaseq/venv \
    && /opt/reaseq/venv/bin/pip install --no-cache-dir -c constraints.txt pyyaml numpy kafka-python tqdm \
    && /opt/reaseq/venv/bin/pip install --no-cache-dir --no-deps .
# Kafka connector, kafka-clients and the glue jar, pinned by the POM, into /opt/reaseq/cache/jvm
RUN REASEQ_CACHE_DIR=/opt/reaseq/cache /opt/reaseq/venv/bin/python -m streaming.jvm_deps

FROM ${FLINK_IMAGE}
USER root
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
COPY constraints.txt /tmp/constraints.txt
RUN python3.11 -m venv /opt/reaseq/venv \
    && /opt/reaseq/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt \
       apache-flink pyyaml numpy kafka-python prometheus-client tqdm
COPY --from=jars /opt/reaseq/venv/lib/python3.11/site-packages/ /opt/reaseq/app-site/
COPY --from=jars /opt/reaseq/cache /opt/reaseq/cache
# the Prometheus reporter as a plugin (metrics.reporter.prom.* in the FlinkDeployment)
RUN mkdir -p /opt/flink/plugins/metrics-prometheus \
    && cp /opt/flink/opt/flink-metrics-prometheus-*.jar /opt/flink/plugins/metrics-prometheus/ \
    && chown -R flink:flink /opt/reaseq
ENV REASEQ_CACHE_DIR=/opt/reaseq/cache \
    PYTHONPATH=/opt/reaseq/app-site \
    PATH=/opt/reaseq/venv/bin:$PATH
# uid 9999 (flink), as the FlinkDeployment's securityContext expects
USER flink
