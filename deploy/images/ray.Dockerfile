# The Ray image: Ray 2.60 with Serve, CUDA torch and this project, the ranker artifact baked in.
# Build from the repository root after training (`reaseq train ranker --dataset ml-100k`):
#   docker build -f deploy/images/ray.Dockerfile -t reaseq-ray:latest .
# For the knowledge LLM (components/llm) build reaseq-ray-llm from the same file with --build-arg EXTRAS=llm.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${RAY_IMAGE}
ARG EXTRAS=""
USER root
RUN mkdir -p /opt/reaseq && chown ray:users /opt/reaseq
USER ray
WORKDIR /opt/reaseq/app
COPY --chown=ray:users pyproject.toml constraints.txt README.md ./
COPY --chown=ray:users reaseq reaseq
COPY --chown=ray:users streaming streaming
COPY --chown=ray:users inference inference
COPY --chown=ray:users ranking ranking
COPY --chown=ray:users monitoring monitoring
COPY --chown=ray:users bench bench
# torch from PyPI is the CUDA build; ray is already in the base image at the pinned version
RUN pip install --no-cache-dir -c constraints.txt . \
    && if [ "$EXTRAS" = "llm" ]; then pip install --no-cache-dir "ray[llm]==2.60.0"; fi
COPY --chown=ray:users artifacts/ranker /opt/reaseq/artifacts/ranker
ENV REASEQ_ARTIFACTS_DIR=/opt/reaseq/artifacts
