"""A lease in the database: which Girder process runs the plugin's background work right now.

Several Girder processes may serve one database (behind a load balancer, or an old process still
stopping while its successor starts). Batch dispatch and schedules must run in exactly one of them,
so each process ticks, and only the holder of the lease acts: a document ``{_id: name, owner,
until}`` in ``lnassist_lease``, taken with one atomic ``find_one_and_update`` when it is free or
expired and renewed by its holder at every tick. A holder that dies (killed, crashed) stops renewing
and another process takes over once ``until`` passes; nothing it did is lost, because all batch and
schedule state is in the database, not in the process.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from girder.models.model_base import Model
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

TTL_S = 15  # a dead holder delays batches by at most this long
OWNER = uuid.uuid4().hex  # this process


def utcnow() -> datetime:
    """Naive UTC, as Girder and pymongo store and return datetimes."""
    return datetime.now(UTC).replace(tzinfo=None)


class Lease(Model):
    def initialize(self) -> None:
        self.name = "lnassist_lease"

    def validate(self, doc: dict) -> dict:
        return doc

    def acquire(self, name: str, owner: str = OWNER, ttl_s: float = TTL_S) -> bool:
        """Take or renew the lease ``name`` for ``owner``; False while another owner holds it."""
        now = utcnow()
        try:
            doc = self.collection.find_one_and_update(
                {"_id": name, "$or": [{"until": {"$lt": now}}, {"owner": owner}]},
                {"$set": {"owner": owner, "until": now + timedelta(seconds=ttl_s)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # the lease exists and is held by someone else: the upsert collided
            return False
        return doc is not None and doc["owner"] == owner

    def release(self, name: str, owner: str = OWNER) -> None:
        """Give the lease up (a process stopping cleanly), so the next one need not wait for it."""
        self.collection.delete_one({"_id": name, "owner": owner})
