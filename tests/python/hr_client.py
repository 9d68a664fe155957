#!/usr/bin/env python3
"""An HR system's view of Tessera, over gRPC with mTLS (Python grpcio, code generated from
proto/ at run time). Used by scripts/demo.sh.

usage: hr_client.py ADDR CA_PEM CLIENT_CERT CLIENT_KEY PROTO_DIR OUT_DIR COMMAND ARGS...
  create ID DISPLAY_NAME UPN EMAIL
  suspend ID REASON
  reinstate ID REASON
Prints one line per call: "<command> <ID> <PERSON_STATE_NAME>"; a refusal exits 1 naming the
gRPC code and message.
"""
import importlib
import sys
import uuid

from grpc_tools import protoc
import grpc


def main():
    addr, ca, cert, key, proto_dir, out_dir, command, *args = sys.argv[1:]
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
    request_id = f"hr-{uuid.uuid4()}"
    with grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        d = rpc.DirectoryServiceStub(channel)
        try:
            if command == "create":
                pid, name, upn, email = args
                record = pb.PersonRecord(external_id=pid, display_name=name, upn=upn, email=email)
                r = d.CreatePerson(pb.CreatePersonRequest(request_id=request_id, person=record))
            elif command == "suspend":
                pid, reason = args
                r = d.SuspendPerson(pb.SuspendPersonRequest(request_id=request_id, external_id=pid, reason=reason))
            elif command == "reinstate":
                pid, reason = args
                r = d.ReinstatePerson(pb.ReinstatePersonRequest(request_id=request_id, external_id=pid, reason=reason))
            else:
                sys.exit(f"unknown command {command!r}; use create, suspend or reinstate")
        except grpc.RpcError as e:
            sys.exit(f"refused: {e.code().name}: {e.details()}")
        print(command, pid, common.PersonState.Name(r.person.state))


if __name__ == "__main__":
    main()
