"""Submits a task to a mawex master and reads its result, using only stubs generated from
the .proto files by grpcio-tools: proof that the protocol needs no Rust on the client side.

usage: interop.py GENERATED_DIR ENDPOINT [CA_PEM_FILE TOKEN]

With a CA file and a token, it speaks TLS (checking the server against that authority, for
the name `localhost`) and sends the token; it also checks that a call without the token is
refused as UNAUTHENTICATED.
"""
import sys
import uuid

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from mawex.v1 import mawex_pb2, mawex_pb2_grpc  # noqa: E402

endpoint = sys.argv[2]
secure = len(sys.argv) > 4


def open_channel(token):
    if not secure:
        return grpc.insecure_channel(endpoint)
    with open(sys.argv[3], "rb") as f:
        tls = grpc.ssl_channel_credentials(root_certificates=f.read())
    credentials = tls
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            tls, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(endpoint, credentials)


if secure:
    with open_channel(None) as anonymous:
        try:
            mawex_pb2_grpc.MasterStub(anonymous).Get(mawex_pb2.TaskIdRequest(id=str(uuid.uuid4())))
            raise AssertionError("a call without a token must be refused")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e

with open_channel(sys.argv[4] if secure else None) as channel:
    master = mawex_pb2_grpc.MasterStub(channel)
    task_id = str(uuid.uuid4())
    spec = mawex_pb2.TaskSpec(id=task_id, group="py", handler="echo", payload=b"from python")
    ack = master.Submit(mawex_pb2.SubmitRequest(task=spec))
    assert ack.id == task_id and ack.created, ack
    again = master.Submit(mawex_pb2.SubmitRequest(task=spec))
    assert not again.created, "a repeated submit is recognised"

    result = master.AwaitResult(mawex_pb2.TaskIdRequest(id=task_id))
    assert result.outcome.WhichOneof("outcome") == "output", result
    view = master.Get(mawex_pb2.TaskIdRequest(id=task_id))
    assert view.state == mawex_pb2.TASK_STATE_SUCCEEDED, view

    try:
        master.Get(mawex_pb2.TaskIdRequest(id="not-a-uuid"))
        raise AssertionError("a malformed id must be refused")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e

    print("OUTPUT", result.outcome.output.decode(), "ATTEMPT", result.attempt)
