"""Keep the results of dinoseg's deployment runs in object storage (S3 in production) instead of on the worker.

    python deployments/result_storage.py s3://lake/dinoseg/prefect-results [--name dinoseg-results]
        [--storage-options '{"endpoint_url": "https://s3.example.com"}']

Saves a Prefect ``RemoteFileSystem`` block (any fsspec URL; s3fs for ``s3://``) on the current Prefect server (see
``PREFECT_API_URL``) and prints the setting that points the workers at it:

    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=remote-file-system/dinoseg-results

Give that to the workers' environment (or to a deployment's ``job_variables.env``, as deployments/gpu.yaml does).
A run's result is its summary (counts and failures), a plain dict that the flows write as JSON: nothing is pickled.
Leave credentials out of ``--storage-options`` where the workers have them already (instance role, ``AWS_*``
variables): block settings are stored on the Prefect server as given.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="folder URL for results, e.g. s3://lake/dinoseg/prefect-results")
    parser.add_argument("--name", default="dinoseg-results", help="block name (default dinoseg-results)")
    parser.add_argument("--storage-options", type=json.loads, default={}, help="JSON object of fsspec options")
    args = parser.parse_args(argv)

    from prefect.filesystems import RemoteFileSystem

    block = RemoteFileSystem(basepath=args.url.rstrip("/") + "/", settings=args.storage_options)
    block.save(args.name, overwrite=True)
    print(f"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=remote-file-system/{args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
