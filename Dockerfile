# lnassist: the Slicer CLIs of cli/ for the Digital Slide Archive (DSA), with PyTorch and the shipped
# models. An admin builds it and registers it with slicer_cli_web:
#
#   docker build -t lnassist:0.1.0 .
#   PUT /slicer_cli_web/docker_image with name=["lnassist:0.1.0"]   (or the DSA's "Upload CLI" page)
#
# The entrypoint is slicer_cli_web's: `IMAGE --list_cli` prints cli/slicer_cli_list.json, `IMAGE Name
# --xml` a CLI's XML, `IMAGE Name ARGS...` runs `python Name/Name.py ARGS...` in /opt/lnassist/cli.
# GPU: torch's Linux wheels are CUDA builds that bring their own CUDA libraries; the host needs only
# the NVIDIA driver and the NVIDIA container toolkit (the label below makes girder_worker ask for
# the GPUs). The CLIs fall back to the CPU when there is none.
#
# Layers, least often changed first: base (CA, libtiff, venv) -> torch/torchvision -> pyproject.toml's
# dependencies (pylibtiff's wheel comes from the sdist-wheels stage, which has the compiler) ->
# models/ -> the lnassist package -> cli/ -> the self-test. A code change rebuilds the last few
# layers only (seconds); the image is about 7 GB, mostly torch's CUDA libraries.
#
# Build arguments (the defaults are the production build, everything from PyPI):
#   BASE_IMAGE      a Debian-based image with Python 3.11 (python3 -m venv must work)
#   PIP_EXTRA_ARGS  extra pip options, e.g. "--find-links http://127.0.0.1:PORT/wheels/" for a local
#                   wheel server (build with --network host); tools/docker_env.sh build does this
#   EXTRA_CA_URL    URL of extra CA certificates (PEM) to trust while building, e.g. a TLS proxy's
#   TORCH_VERSION, TORCHVISION_VERSION, HISTOMICSTK_VERSION   the pins of pyproject.toml / Makefile
#                   (tests/test_docker.py checks they agree)
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS base

LABEL org.opencontainers.image.title="lnassist" \
      org.opencontainers.image.description="AI lymph-node metastasis CLIs for the Digital Slide Archive" \
      org.opencontainers.image.licenses="Apache-2.0" \
      com.nvidia.volumes.needed="nvidia_driver"

ENV PYTHONUNBUFFERED=TRUE \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LNASSIST_MODELS=/opt/lnassist/models

ARG PIP_EXTRA_ARGS=""
ARG EXTRA_CA_URL=""

# libtiff: pylibtiff (large_image's tiff source) loads the system's with ctypes. A virtual
# environment: the same on python:3.11-slim and on a Debian python3 (whose pip refuses, PEP 668).
RUN set -eux; \
    if [ -n "${EXTRA_CA_URL}" ]; then \
        python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])' \
            "${EXTRA_CA_URL}" /usr/local/share/ca-certificates/lnassist-build-ca.crt; \
        update-ca-certificates; \
    fi; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libtiff6; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv "${VIRTUAL_ENV}"; \
    pip install ${PIP_EXTRA_ARGS} --upgrade pip

# pylibtiff is only published as source with C code: build its wheel here, with a compiler that
# stays out of the image.
FROM base AS sdist-wheels
ARG PIP_EXTRA_ARGS=""
RUN set -eux; \
    apt-get update; \
    packages="gcc libc6-dev"; \
    include="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    [ -f "${include}/Python.h" ] || packages="${packages} python3-dev"; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${packages}; \
    pip wheel ${PIP_EXTRA_ARGS} --no-deps --wheel-dir /wheels pylibtiff

FROM base
ARG PIP_EXTRA_ARGS=""

# Dependencies before the source, heaviest first, so that a change of code or pyproject.toml does
# not reinstall torch (about 4.5 GB with the CUDA libraries).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install ${PIP_EXTRA_ARGS} "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY --from=sdist-wheels /wheels/ /opt/lnassist/wheels/

# pyproject.toml's build requirements and dependencies; histomicstk without its own dependencies as
# the Makefile does (its plain install pulls GDAL's source; pyproject.toml lists what lnassist needs).
ARG HISTOMICSTK_VERSION=1.4.0
COPY pyproject.toml /opt/lnassist/src/
RUN set -eux; \
    python -c 'import tomllib; p = tomllib.load(open("/opt/lnassist/src/pyproject.toml", "rb")); \
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' > /tmp/requirements.txt; \
    pip install ${PIP_EXTRA_ARGS} /opt/lnassist/wheels/*.whl -r /tmp/requirements.txt; \
    pip install ${PIP_EXTRA_ARGS} --no-deps "histomicstk==${HISTOMICSTK_VERSION}"; \
    rm /tmp/requirements.txt

# The shipped models (registry.json, *.pt, model cards): $LNASSIST_MODELS.
COPY models/ /opt/lnassist/models/

# The package itself (its dependencies are all installed above: nothing is fetched here).
COPY README.md /opt/lnassist/src/
COPY lnassist/ /opt/lnassist/src/lnassist/
RUN set -eux; \
    pip install --no-deps --no-build-isolation --no-index /opt/lnassist/src; \
    rm -rf /opt/lnassist/src/build /opt/lnassist/src/*.egg-info

COPY cli/ /opt/lnassist/cli/
WORKDIR /opt/lnassist/cli

# Build-time self-test: --list_cli, every CLI's --xml and --help, the imports, the models' sha256.
COPY tools/docker_selftest.py /opt/lnassist/selftest.py
RUN python /opt/lnassist/selftest.py --torch "${TORCH_VERSION}" --torchvision "${TORCHVISION_VERSION}"

ENTRYPOINT ["python", "-m", "slicer_cli_web.cli_list_entrypoint"]
