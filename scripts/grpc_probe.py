#!/usr/bin/env python3
"""Looks at a running FlatRender server with off-the-shelf gRPC tooling (grpcio's health and
reflection clients), as an operator's client would, and prints what it sees as JSON:

    {"overall": "SERVING", "services": {"flatrender.render.v1.RenderService": {"health": "SERVING",
     "methods": 10}, ...}}

Usage: grpc_probe.py HOST:PORT
"""
import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main(address: str) -> None:
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    health = health_pb2_grpc.HealthStub(channel)

    def status(name: str) -> str:
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    database = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(database)
    services = {}
    for name in database.get_services():
        entry = {"methods": len(pool.FindServiceByName(name).methods)}
        if name.startswith("flatrender."):
            entry["health"] = status(name)
        services[name] = entry
    print(json.dumps({"overall": status(""), "services": services}, indent=1, sort_keys=True))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
