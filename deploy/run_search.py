"""Entry script for ``ray submit deploy/cluster.yaml deploy/run_search.py configs/<config>.yaml [--set k=v ...]``.

It runs on the head node, inside the image, and joins the running cluster (``--address auto``). A config path
that does not exist where the script runs is looked up in the image's copy of the project. Trials log to the
MLflow server that cluster.yaml starts on the head (a later ``--set mlflow.tracking_uri=...`` wins). Pass
``--set storage=s3://<bucket>/cascade`` (or a shared mount) so that checkpoints and the teacher outlive a node;
the head is CPU-only and never trains (the teacher is a Ray task with a trial's GPU resources).
"""
import socket
import sys
from pathlib import Path

from cascade_cli import main

PROJECT = Path("/home/ray/cascade")

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and not Path(args[0]).exists() and (PROJECT / args[0]).exists():
        args[0] = str(PROJECT / args[0])
    head = socket.gethostbyname(socket.gethostname())  # the launcher runs containers with host networking
    server = ["--set", f"mlflow.tracking_uri=http://{head}:5000"]
    sys.exit(main(["search", args[0], *server, *args[1:], "--address", "auto"]))
