"""Local conditions database (basf2 format), global tags with their states, and database chains."""

from .database import DatabaseChain, DatabaseError, LocalDatabase, PayloadEntry, parse_database_txt, payload_filename
from .globaltag import (ALLOWED_TRANSITIONS, GlobalTag, GlobalTagError, GlobalTagState, copy_payloads,
                        open_chain)
from .payload import PayloadError, payload_checksum, read_payload, write_payload

__all__ = [
    "ALLOWED_TRANSITIONS", "DatabaseChain", "DatabaseError", "GlobalTag", "GlobalTagError", "GlobalTagState",
    "LocalDatabase", "PayloadEntry", "PayloadError", "copy_payloads", "open_chain", "parse_database_txt",
    "payload_checksum", "payload_filename", "read_payload", "write_payload",
]
