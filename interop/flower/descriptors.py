#!/usr/bin/env python3
"""Write Flower's protobuf descriptors as a FileDescriptorSet for pupil-flower's build.

The flwr wheel carries no .proto files, but each flwr/proto/*_pb2.py module registers its
file's serialized FileDescriptorProto; this collects them (dependencies first) into one
FileDescriptorSet that prost-build compiles. Run with the Python of a venv holding the
flwr version the set is for:

    python3 -m venv /tmp/flwr && /tmp/flwr/bin/pip install flwr==1.42.0
    /tmp/flwr/bin/python interop/flower/descriptors.py runtime/pupil-flower/proto/flwr-1.42.0.fds
"""

import importlib
import pkgutil
import sys

import flwr
import flwr.proto
from google.protobuf import descriptor_pb2


def main():
    out = sys.argv[1]
    files = descriptor_pb2.FileDescriptorSet()
    seen = set()

    def add(fd):
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            add(dep)
        seen.add(fd.name)
        if fd.name.startswith("google/protobuf/"):
            return  # well-known types: prost_types has them
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files.file.append(proto)

    for module in sorted(pkgutil.iter_modules(flwr.proto.__path__), key=lambda m: m.name):
        if module.name.endswith("_pb2"):
            add(importlib.import_module(f"flwr.proto.{module.name}").DESCRIPTOR)
    with open(out, "wb") as f:
        f.write(files.SerializeToString(deterministic=True))
    print(f"flwr {flwr.__version__}: {len(files.file)} files -> {out}")


if __name__ == "__main__":
    main()
