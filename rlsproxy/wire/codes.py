"""Message type bytes of protocol 3.0, named as in PostgreSQL's protocol.h, and special request codes."""

from typing import Final

# Frontend (client -> server)
BIND: Final = 0x42  # 'B'
CLOSE: Final = 0x43  # 'C'
DESCRIBE: Final = 0x44  # 'D'
EXECUTE: Final = 0x45  # 'E'
FUNCTION_CALL: Final = 0x46  # 'F'
FLUSH: Final = 0x48  # 'H'
PARSE: Final = 0x50  # 'P'
QUERY: Final = 0x51  # 'Q'
SYNC: Final = 0x53  # 'S'
TERMINATE: Final = 0x58  # 'X'
COPY_FAIL: Final = 0x66  # 'f'
GSS_RESPONSE: Final = 0x70  # 'p' (PasswordMessage, SASLInitialResponse and SASLResponse share it)
PASSWORD_MESSAGE: Final = 0x70

# Both directions
COPY_DATA: Final = 0x64  # 'd'
COPY_DONE: Final = 0x63  # 'c'

# Backend (server -> client)
PARSE_COMPLETE: Final = 0x31  # '1'
BIND_COMPLETE: Final = 0x32  # '2'
CLOSE_COMPLETE: Final = 0x33  # '3'
NOTIFICATION_RESPONSE: Final = 0x41  # 'A'
COMMAND_COMPLETE: Final = 0x43  # 'C'
DATA_ROW: Final = 0x44  # 'D'
ERROR_RESPONSE: Final = 0x45  # 'E'
COPY_IN_RESPONSE: Final = 0x47  # 'G'
COPY_OUT_RESPONSE: Final = 0x48  # 'H'
EMPTY_QUERY_RESPONSE: Final = 0x49  # 'I'
BACKEND_KEY_DATA: Final = 0x4B  # 'K'
NOTICE_RESPONSE: Final = 0x4E  # 'N'
AUTHENTICATION: Final = 0x52  # 'R'
PARAMETER_STATUS: Final = 0x53  # 'S'
ROW_DESCRIPTION: Final = 0x54  # 'T'
FUNCTION_CALL_RESPONSE: Final = 0x56  # 'V'
COPY_BOTH_RESPONSE: Final = 0x57  # 'W'
READY_FOR_QUERY: Final = 0x5A  # 'Z'
NO_DATA: Final = 0x6E  # 'n'
PORTAL_SUSPENDED: Final = 0x73  # 's'
PARAMETER_DESCRIPTION: Final = 0x74  # 't'
NEGOTIATE_PROTOCOL_VERSION: Final = 0x76  # 'v'

# Authentication request codes (int32 after 'R')
AUTH_OK: Final = 0
AUTH_CLEARTEXT_PASSWORD: Final = 3
AUTH_MD5_PASSWORD: Final = 5
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12

# Startup-phase request codes (in place of a protocol version), from pqcomm.h
PROTOCOL_3_0: Final = 3 << 16
CANCEL_REQUEST_CODE: Final = (1234 << 16) | 5678
SSL_REQUEST_CODE: Final = (1234 << 16) | 5679
GSSENC_REQUEST_CODE: Final = (1234 << 16) | 5680

# Transaction status bytes in ReadyForQuery
TX_IDLE: Final = 0x49  # 'I'
TX_IN_BLOCK: Final = 0x54  # 'T'
TX_FAILED: Final = 0x45  # 'E'
