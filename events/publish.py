"""Publication to NATS JetStream: the LINKLEDGER stream and what the log itself publishes."""

import json
import logging

import nats.aio.client
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from events.integrity import Digest

log = logging.getLogger("linkledger.publish")

STREAM_NAME = "LINKLEDGER"
SUBJECT_PREFIX = "linkledger"
DIGEST_SUBJECT = f"{SUBJECT_PREFIX}._ledger.digest"
DUPLICATE_WINDOW_SECONDS = 2 * 60 * 60


async def ensure_stream(nc: nats.aio.client.Client, name: str = STREAM_NAME, prefix: str = SUBJECT_PREFIX) -> None:
    js = nc.jetstream()
    config = StreamConfig(
        name=name, subjects=[f"{prefix}.>"], storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_SECONDS
    )
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)


async def publish_digest(nc: nats.aio.client.Client, digest: Digest, subject: str = DIGEST_SUBJECT) -> None:
    """Digests leave the database, so deleting one there is caught by whoever kept the copy."""
    await ensure_stream(nc)
    await nc.jetstream().publish(
        subject, json.dumps(digest.as_dict()).encode(), headers={"Nats-Msg-Id": f"digest-{digest.body_hash.hex()}"}, timeout=5
    )
