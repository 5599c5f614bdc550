"""A CRI (runtime.v1) client for the integration suite: Debian has no crictl.

`api.proto` here is kubernetes/cri-api v0.25.0's pkg/apis/runtime/v1/api.proto
with only the gogoproto import and file options removed (see its header).
`Cri(...)` generates the Python modules from it with grpc_tools.protoc (Debian's
python3-grpc-tools, for /usr/bin/python3) into a temporary directory, imports
them, and connects to a containerd socket. Nothing generated is committed.
"""
import importlib
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "api.proto")

_modules = None


def generate():
    """(api_pb2, api_pb2_grpc), generated once per process from api.proto."""
    global _modules
    if _modules is not None:
        return _modules
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="cri-gen-")
    try:
        # A package of its own so the generic module names cannot clash.
        pkg = os.path.join(out, "cri_runtime_v1")
        os.makedirs(pkg)
        shutil.copy(PROTO, os.path.join(pkg, "api.proto"))
        open(os.path.join(pkg, "__init__.py"), "w").close()
        rc = protoc.main(["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}",
                          os.path.join(pkg, "api.proto")])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {PROTO}")
        sys.path.insert(0, out)
        try:
            pb2 = importlib.import_module("cri_runtime_v1.api_pb2")
            grpc_mod = importlib.import_module("cri_runtime_v1.api_pb2_grpc")
        finally:
            sys.path.remove(out)
    finally:
        shutil.rmtree(out)  # the modules are loaded; the files are not needed
    _modules = (pb2, grpc_mod)
    return _modules


class Cri:
    """The kubelet's two CRI services on one unix socket.

    `cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(...))` etc.; `pb` is the
    generated message module. Calls take `timeout=` (seconds) like the
    kubelet's per-call deadlines."""

    def __init__(self, socket_path):
        import grpc

        self.pb, grpc_mod = generate()
        self.channel = grpc.insecure_channel("unix://" + socket_path)
        self.rt = grpc_mod.RuntimeServiceStub(self.channel)
        self.img = grpc_mod.ImageServiceStub(self.channel)

    def close(self):
        self.channel.close()
