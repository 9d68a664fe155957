"""What every Python client of tessera.v1 here needs: the DirectoryService code generated from
proto/ at run time, and an mTLS channel to the server."""
import importlib
import sys

from grpc_tools import protoc
import grpc


def directory_modules(proto_dir, out_dir):
    """Generates tessera/v1/{common,directory}.proto into out_dir and returns the modules
    (directory_pb2, directory_pb2_grpc, common_pb2)."""
    files = [f"tessera/v1/{n}.proto" for n in ("common", "directory")]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    return (
        importlib.import_module("tessera.v1.directory_pb2"),
        importlib.import_module("tessera.v1.directory_pb2_grpc"),
        importlib.import_module("tessera.v1.common_pb2"),
    )


def mtls_channel(addr, ca, cert, key):
    """A channel to addr presenting the client certificate cert/key and trusting ca; the
    server's certificate is checked for the name localhost."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read(),
    )
    return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
