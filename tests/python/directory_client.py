#!/usr/bin/env python3
"""A Python grpcio client for tessera.v1, generated from proto/ at run time.

Drives a person through create -> suspend -> reinstate -> offboard over mTLS and prints one
line per step: "<step> <PERSON_STATE_NAME>". Used by tests/it/server.rs.

With the revocation arguments it also acts as a relying party (tests/it/revocation.rs): after
"create" it waits for one line on stdin (the test issues the person a certificate to
PERSON_CERT meanwhile), and after every step prints what `openssl crl` and `openssl ocsp` say
about that certificate: "  crl <not listed | reason>  ocsp <status>[ <reason>]".

usage: directory_client.py ADDR CA_PEM CLIENT_CERT CLIENT_KEY PROTO_DIR OUT_DIR
           [HTTP_ADDR CHAIN_PEM ISSUER_PEM PERSON_CERT]
"""
import os
import re
import subprocess
import sys
import urllib.request


class RelyingParty:
    """Reads the CRL and asks the OCSP responder about one certificate, with openssl."""

    def __init__(self, http_addr, chain, issuer, cert, out_dir):
        self.base = f"http://{http_addr}"
        self.chain, self.issuer, self.cert = chain, issuer, cert
        self.crl_file = os.path.join(out_dir, "crl.der")

    def serial(self):
        out = run(["openssl", "x509", "-in", self.cert, "-noout", "-serial"])
        return out.strip().split("=", 1)[1]

    def crl_status(self):
        with urllib.request.urlopen(f"{self.base}/crl") as r:
            open(self.crl_file, "wb").write(r.read())
        text = run(["openssl", "crl", "-inform", "DER", "-in", self.crl_file, "-text", "-noout",
                    "-CAfile", self.chain], expect_stderr="verify OK\n")
        entries = re.split(r"\n\s*Serial Number: ", text)[1:]
        for entry in entries:
            if entry.split()[0] == self.serial():
                m = re.search(r"CRL Reason Code: *\n\s*(.+)", entry)
                return m.group(1).strip() if m else "unspecified"
        return "not listed"

    def ocsp_status(self):
        # No nonce, as RFC 5019 clients: the responder answers from its pre-signed responses,
        # which carry none.
        out = run(["openssl", "ocsp", "-issuer", self.issuer, "-cert", self.cert, "-no_nonce",
                   "-url", f"{self.base}/ocsp", "-CAfile", self.chain],
                  expect_stderr="Response verify OK\n")
        status = out.splitlines()[0].rsplit(": ", 1)[1]
        m = re.search(r"\tReason: (\S+)", out)
        return f"{status} {m.group(1)}" if m else status

    def report(self):
        print(f"  crl {self.crl_status()}  ocsp {self.ocsp_status()}", flush=True)


def run(args, expect_stderr=""):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0 or p.stderr != expect_stderr:
        sys.exit(f"{args[0]} {args[1]} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p.stdout

import grpc

from tessera_grpc import directory_modules, mtls_channel


def main():
    addr, ca, cert, key, proto_dir, out_dir = sys.argv[1:7]
    rp = RelyingParty(*sys.argv[7:11], out_dir) if len(sys.argv) == 11 else None
    pb, rpc, common = directory_modules(proto_dir, out_dir)
    with mtls_channel(addr, ca, cert, key) as channel:
        d = rpc.DirectoryServiceStub(channel)
        record = pb.PersonRecord(
            external_id="PY1", display_name="Py Thon", upn="py1@corp.test", email="py1@corp.test"
        )
        name = lambda r: common.PersonState.Name(r.person.state)
        report = rp.report if rp else (lambda: None)
        print("create", name(d.CreatePerson(pb.CreatePersonRequest(request_id="py-c", person=record))), flush=True)
        if rp:
            sys.stdin.readline()  # the test has issued PY1 a certificate
        report()
        print("suspend", name(d.SuspendPerson(pb.SuspendPersonRequest(request_id="py-s", external_id="PY1"))))
        report()
        print("reinstate", name(d.ReinstatePerson(pb.ReinstatePersonRequest(request_id="py-r", external_id="PY1"))))
        report()
        print("offboard", name(d.OffboardPerson(pb.OffboardPersonRequest(request_id="py-o", external_id="PY1"))))
        report()
        try:
            d.ReinstatePerson(pb.ReinstatePersonRequest(request_id="py-r2", external_id="PY1"))
        except grpc.RpcError as e:
            print("refused", e.code().name, e.details())


if __name__ == "__main__":
    main()
