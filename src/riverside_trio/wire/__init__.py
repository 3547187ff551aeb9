"""The wire: frame encoding and parsing (compiled, with pure-Python twins), permessage-deflate
and the rules of the opening handshake. No I/O here. Internal."""
