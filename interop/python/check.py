#!/usr/bin/env python3
"""A client of Herald that is not Herald's own.

Stubs are generated from client/proto/herald.proto by grpcio-tools at run
time (never herald-client), and the P-iptv, P-handoff and P-share flows
are driven over TLS with a client certificate, as any other gRPC stack
would: the automatic login, a refusal read back through the standard
google.rpc.ErrorInfo in the status details, a registered account's login,
the first access request, and a session handed to a terminal that is told
through the session watch (whose response names its start revision); and
P-share: a storage server kept up by heartbeats, an upload admitted with
keys, a stranger refused access.

    python3 interop/python/check.py --endpoint 127.0.0.1:7300 \\
        --ca ca.crt --cert client.root.crt --key client.root.key

Needs grpcio, grpcio-tools and grpcio-status (`.ci/install-python-grpc`).
Exits 0 when every check holds, 1 at the first that does not, naming it.
"""

import argparse
import os
import sys
import tempfile

import grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from grpc_tools import protoc

PROTO_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "client", "proto")
TIMEOUT_S = 30


def stubs():
    """herald_pb2 and herald_pb2_grpc, generated into a temporary dir."""
    out = tempfile.mkdtemp(prefix="herald-py-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "herald.proto",
        ]
    )
    if rc != 0:
        sys.exit(f"protoc failed on herald.proto ({rc})")
    sys.path.insert(0, out)
    import herald_pb2
    import herald_pb2_grpc

    return herald_pb2, herald_pb2_grpc


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def reason(err):
    """The ErrorInfo reason in a refusal's standard status details."""
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return None


def refused(call, code, why):
    try:
        call()
    except grpc.RpcError as err:
        return err.code() == code and reason(err) == why
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    pb, rpc = stubs()

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert))
    channel = grpc.secure_channel(args.endpoint, creds)
    api = rpc.HeraldStub(channel)
    t = TIMEOUT_S

    # P-iptv: a platform with an open unit and a closed one, a pool each.
    platform = api.CreatePlatform(
        pb.CreatePlatformRequest(
            name="py",
            units=[
                pb.UnitSpec(name="quiz", qos_class="gold", response_time_ms=150),
                pb.UnitSpec(name="shut", access_policy=pb.CLOSED),
            ],
        ),
        timeout=t,
    ).platform
    units = [u.unit_id for u in platform.units]
    pools = [
        api.CreatePool(
            pb.CreatePoolRequest(
                unit_id=u, name=f"p{u}", provision=1, max_size=2, default_ttl_ms=60_000
            ),
            timeout=t,
        ).pool.pool_id
        for u in units
    ]
    both = api.LeaseAndLogin(
        pb.LeaseAndLoginRequest(
            lease=pb.LeaseRequest(pool_id=pools[0], user="viewer-1", request_id="py-1")
        ),
        timeout=t,
    )
    check(
        both.login.ok and both.login.lease.lease_id == both.lease.lease.lease_id,
        "LeaseAndLogin leases and logs in with the same lease",
    )
    check(
        both.lease.service.qos_class == "gold" and both.lease.service.response_time_ms == 150,
        "the lease carries the unit's QoS class and response-time target",
    )
    check(
        refused(
            lambda: api.LeaseAndLogin(
                pb.LeaseAndLoginRequest(
                    lease=pb.LeaseRequest(pool_id=pools[1], user="v", request_id="py-2")
                ),
                timeout=t,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "UNIT_CLOSED",
        ),
        "a closed unit leases nothing: FAILED_PRECONDITION, ErrorInfo reason UNIT_CLOSED",
    )
    api.RegisterAccount(
        pb.RegisterAccountRequest(unit_id=units[0], account="alice", password="correct horse"),
        timeout=t,
    )
    own = api.AccountLogin(
        pb.AccountLoginRequest(
            unit_id=units[0], account="alice", password="correct horse", user="alice"
        ),
        timeout=t,
    )
    check(own.ok and own.registered, "a registered account logs in with its own password")
    wrong = api.AccountLogin(
        pb.AccountLoginRequest(unit_id=units[0], account="alice", password="wrong horse!", user="alice"),
        timeout=t,
    )
    check(not wrong.ok, "a wrong password is refused")
    api.SetContentUnits(
        pb.SetContentUnitsRequest(platform_id=platform.platform_id, content_id="film", mode=pb.UNITS_ALL),
        timeout=t,
    )
    first = api.FirstAccess(
        pb.FirstAccessRequest(platform_id=platform.platform_id, content_id="film"), timeout=t
    )
    check(
        [(u.unit.unit_id, u.available) for u in first.units] == [(units[0], True), (units[1], False)],
        "the first access request shows every unit, the closed one unavailable",
    )

    # P-handoff: the TV watches; the phone pushes its session to it.
    phone = pb.Terminal(kind=pb.IMEI, id="490154203237518")
    tv = pb.Terminal(kind=pb.MAC, id="00:1a:2b:3c:4d:5e")
    watch = api.WatchSessions(pb.WatchSessionsRequest(terminals=[tv]), timeout=t)
    start = dict(watch.initial_metadata()).get("herald-start-revision")
    check(start is not None and int(start) > 0, f"the session watch names its start ({start})")
    session = api.ConnectSession(
        pb.ConnectRequest(terminal=phone, app_url="https://apps.example/quiz", capabilities=["video"]),
        timeout=t,
    ).session
    push = pb.HandoffRequest(
        session_id=session.session_id,
        mode=pb.PUSH,
        initiator=phone,
        candidates=[pb.Candidate(terminal=tv, capabilities=["video"])],
        epoch=session.epoch,
    )
    moved = api.Handoff(push, timeout=t)
    check(moved.accepted and moved.session.epoch == session.epoch + 1, "the push hands the session over")
    told = next(watch)
    check(
        told.kind == pb.SESSION_HANDED_OFF
        and told.session.session_id == session.session_id
        and told.session.terminal.id == tv.id,
        "the TV is told through the session watch",
    )
    watch.cancel()
    check(
        refused(
            lambda: api.Handoff(push, timeout=t),
            grpc.StatusCode.FAILED_PRECONDITION,
            "FENCED",
        ),
        "the old holder at its old epoch is fenced: reason FENCED",
    )
    # P-share: a storage server kept up by its heartbeats (never logged),
    # an upload admitted to it, a stranger refused access.
    share = rpc.ShareStub(channel)
    share.RegisterStorage(
        pb.RegisterStorageRequest(server_id="py-s1", address="py-s1.media:9000", capacity_bytes=1000),
        timeout=t,
    )
    share.AddFriend(pb.FriendshipRequest(user="ann", friend="ben"), timeout=t)
    check(
        refused(
            lambda: share.ShareMedia(
                pb.ShareMediaRequest(owner="ann", receivers=["ben"], size_bytes=10, request_id="py-0"),
                timeout=t,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "STORAGE_DOWN",
        ),
        "a storage server never heard from takes no upload: STORAGE_DOWN",
    )
    beats = [
        share.StorageHeartbeat(
            pb.StorageHeartbeatRequest(server_id="py-s1", up=True, ttl_ms=30_000), timeout=t
        ).server
        for _ in range(3)
    ]
    check(
        all(b.up and b.heartbeat_ttl_ms == 30_000 for b in beats)
        and len({b.up_since_ms for b in beats}) == 1,
        "heartbeats keep the storage server up in one spell",
    )
    made = share.ShareMedia(
        pb.ShareMediaRequest(owner="ann", receivers=["ben"], size_bytes=600, request_id="py-1"),
        timeout=t,
    )
    check(
        made.share.server_id == "py-s1" and len(made.owner_key) == 32 and len(made.receiver_keys) == 1,
        "an upload is admitted to the server with keys shown once",
    )
    share.CommitShare(
        pb.CommitShareRequest(share_id=made.share.share_id, owner_key=made.owner_key, size_bytes=500),
        timeout=t,
    )
    check(
        refused(
            lambda: share.AccessShare(
                pb.AccessShareRequest(share_id=made.share.share_id, user="eve"), timeout=t
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_FRIEND",
        ),
        "a stranger is refused access: PERMISSION_DENIED, reason NOT_FRIEND",
    )
    print("interop: every check held")


if __name__ == "__main__":
    main()
