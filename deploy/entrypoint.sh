#!/bin/sh
# `docker run IMAGE search spaces/x.yaml` runs `cascade search ...`; any other command (bash, ray, python:
# what Ray's cluster launcher runs in its containers) runs as it is.
case "$1" in
  teacher|prune|search|resume|frontier|--help|-h) exec cascade "$@" ;;
  *) exec "$@" ;;
esac
