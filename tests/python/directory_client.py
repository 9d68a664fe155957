#!/usr/bin/env python3
"""A Python grpcio client for tessera.v1, generated from proto/ at run time.

Drives a person through create -> suspend -> reinstate -> offboard over mTLS and prints one
line per step: "<step> <PERSON_STATE_NAME>". Used by tests/server.rs.

usage: directory_client.py ADDR CA_PEM CLIENT_CERT CLIENT_KEY PROTO_DIR OUT_DIR
"""
import importlib
import sys

from grpc_tools import protoc
import grpc


def main():
    addr, ca, cert, key, proto_dir, out_dir = sys.argv[1:7]
    files = [f"tessera/v1/{n}.proto" for n in ("common", "directory")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("tessera.v1.directory_pb2")
    rpc = importlib.import_module("tessera.v1.directory_pb2_grpc")
    common = importlib.import_module("tessera.v1.common_pb2")

    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(addr, creds, options=options) as channel:
        d = rpc.DirectoryServiceStub(channel)
        record = pb.PersonRecord(
            external_id="PY1", display_name="Py Thon", upn="py1@corp.test", email="py1@corp.test"
        )
        name = lambda r: common.PersonState.Name(r.person.state)
        print("create", name(d.CreatePerson(pb.CreatePersonRequest(request_id="py-c", person=record))))
        print("suspend", name(d.SuspendPerson(pb.SuspendPersonRequest(request_id="py-s", external_id="PY1"))))
        print("reinstate", name(d.ReinstatePerson(pb.ReinstatePersonRequest(request_id="py-r", external_id="PY1"))))
        print("offboard", name(d.OffboardPerson(pb.OffboardPersonRequest(request_id="py-o", external_id="PY1"))))
        try:
            d.ReinstatePerson(pb.ReinstatePersonRequest(request_id="py-r2", external_id="PY1"))
        except grpc.RpcError as e:
            print("refused", e.code().name, e.details())


if __name__ == "__main__":
    main()
