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
import sys
import uuid

import grpc

from tessera_grpc import directory_modules, mtls_channel


def main():
    addr, ca, cert, key, proto_dir, out_dir, command, *args = sys.argv[1:]
    pb, rpc, common = directory_modules(proto_dir, out_dir)
    request_id = f"hr-{uuid.uuid4()}"
    with mtls_channel(addr, ca, cert, key) as channel:
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
