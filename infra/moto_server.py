"""moto's server, answering one request at a time.

`moto_server` serves requests on threads, and moto's DynamoDB models hold no lock, so two
concurrent conditional writes can both pass their condition: something DynamoDB never allows.
Serving requests one at a time makes each API call atomic, as it is on AWS, so the tests of
concurrent idempotent submits test our code and not the emulator's races.

Usage: python infra/moto_server.py PORT
"""

import sys

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app


def main() -> None:
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, app, threaded=False)


if __name__ == "__main__":
    main()
