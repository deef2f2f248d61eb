# Image for Ray cluster nodes: the official Ray image (same Ray version as the project, CUDA-capable),
# the project installed the README's way, `cascade` as the entry point. Build: docker build -t cascade .
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu

# The base image's user (ray, uid 1000): not root.
USER 1000

# The install step is the README's; no pip cache in the image.
ENV PIP_NO_CACHE_DIR=1
# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY --chown=1000:100 pyproject.toml README.md /home/ray/cascade/
WORKDIR /home/ray/cascade
RUN mkdir cascade spaces search \
 && touch cascade/__init__.py spaces/__init__.py search/__init__.py cascade_cli.py \
 && python3 -m pip install -e .

# The source last: editing code rebuilds only these layers.
COPY --chown=1000:100 cascade cascade
COPY --chown=1000:100 spaces spaces
COPY --chown=1000:100 search search
COPY --chown=1000:100 cascade_cli.py cascade_cli.py
COPY --chown=1000:100 configs configs
COPY --chown=1000:100 deploy deploy

ENV CASCADE_CACHE=/home/ray/.cache/cascade
ENTRYPOINT ["/home/ray/cascade/deploy/entrypoint.sh"]
CMD ["--help"]
