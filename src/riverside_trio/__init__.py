"""riverside-trio: a WebSocket server framework for Trio.

Write one :class:`Handler`, then ``riverside-trio serve module:Handler`` or embed it with
``await nursery.start(riverside_trio.serve, handler, config)``.
"""

from __future__ import annotations

# client authentication
from .auth import Authenticator as Authenticator
from .auth import JWTAuthenticator as JWTAuthenticator

# the Trio client
from .client import Client as Client
from .client import open_client as open_client
from .cluster import ClusterView as ClusterView
from .cluster import ConnectionInfo as ConnectionInfo
from .cluster import NameClaim as NameClaim
from .cluster import NameLost as NameLost
from .cluster import NodeInfo as NodeInfo
from .codecs import CBORCodec as CBORCodec
from .codecs import Codec as Codec
from .codecs import JSONCodec as JSONCodec
from .codecs import RawBinaryCodec as RawBinaryCodec
from .codecs import RawCodec as RawCodec
from .codecs import RawTextCodec as RawTextCodec

# settings
from .config import Config as Config
from .config import load_config as load_config
from .destinations import Channel as Channel
from .destinations import Group as Group
from .destinations import Name as Name
from .destinations import Session as Session
from .destinations import User as User

# errors
from .errors import AuthError as AuthError
from .errors import BrokerError as BrokerError
from .errors import CloseConnection as CloseConnection
from .errors import CodecError as CodecError
from .errors import ConfigError as ConfigError
from .errors import ConnectionClosed as ConnectionClosed
from .errors import DeliveryError as DeliveryError
from .errors import NameInUseError as NameInUseError
from .errors import ProtocolError as ProtocolError
from .errors import RequestError as RequestError
from .errors import RequestTimeout as RequestTimeout
from .errors import RiversideError as RiversideError
from .errors import SessionError as SessionError
from .errors import SessionStoreError as SessionStoreError
from .handler import Accept as Accept
from .handler import AuthRequest as AuthRequest
from .handler import ControlFrame as ControlFrame
from .handler import Handler as Handler
from .handler import Headers as Headers
from .handler import HTTPRequest as HTTPRequest
from .handler import HTTPResponse as HTTPResponse
from .handler import TaskFailed as TaskFailed
from .handler import TaskResult as TaskResult
from .handler import TerminateReason as TerminateReason
from .metrics import Metrics as Metrics

# request/reply, signals and restorable sessions
from .rpc._envelope import ErrorCode as ErrorCode
from .rpc._envelope import SessionData as SessionData
from .rpc._redis_store import RedisSessionStore as RedisSessionStore
from .rpc._router import RPCHandler as RPCHandler
from .rpc._router import request as request
from .rpc._router import signal as signal
from .rpc._sessions import MemoryStore as MemoryStore
from .rpc._sessions import Sessions as Sessions
from .rpc._sessions import SessionStore as SessionStore
from .rpc._webwire import WebwireCodec as WebwireCodec

# handlers and what passes through them
from .server._connection import Connection as Connection

# running a server
from .server._server import Server as Server
from .server._server import run as run
from .server._server import serve as serve
from .server._tls import make_ssl_context as make_ssl_context

__version__ = "0.1.0"
