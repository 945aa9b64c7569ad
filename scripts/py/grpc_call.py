"""Calls one unary gRPC method, with no generated code: the request and response types
come from the server's reflection (grpcio-reflection). Prints the response as JSON, or
the status code and message on stderr (exit 1).

    python grpc_call.py HOST:PORT CA_FILE /package.Service/Method 'JSON' [key=value ...]

Extra key=value pairs are sent as metadata (authorization=Bearer ..., x-tenant=...).
"""
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    target, ca_file, path, body = sys.argv[1:5]
    metadata = [tuple(kv.split("=", 1)) for kv in sys.argv[5:]]
    service, method = path.strip("/").rsplit("/", 1)
    with open(ca_file, "rb") as f:
        creds = grpc.ssl_channel_credentials(f.read())
    with grpc.secure_channel(target, creds) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        m = pool.FindServiceByName(service).FindMethodByName(method)
        request_type = message_factory.GetMessageClass(m.input_type)
        response_type = message_factory.GetMessageClass(m.output_type)
        call = channel.unary_unary(
            path,
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        request = json_format.Parse(body, request_type())
        try:
            response = call(request, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
