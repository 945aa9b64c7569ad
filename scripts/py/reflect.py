"""Lists a gRPC server's services and resolves every method of each with grpcio's own
reflection client (grpcio-reflection, which speaks reflection v1alpha), over TLS checked
against a CA file. Prints {"service": ["Method", ...]} as JSON.

    python reflect.py HOST:PORT CA_FILE
"""
import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    target, ca_file = sys.argv[1], sys.argv[2]
    with open(ca_file, "rb") as f:
        creds = grpc.ssl_channel_credentials(f.read())
    with grpc.secure_channel(target, creds) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(db)
        services = {}
        for name in db.get_services():
            services[name] = [m.name for m in pool.FindServiceByName(name).methods]
    print(json.dumps(services))


if __name__ == "__main__":
    main()
