import socket, struct, trio
from riverside_trio import Handler, RawCodec
from tests._helpers import running, RawClient, client_frame, upgrade_request

class H(Handler):
    codec = RawCodec()
    async def handle_message(self, msg, conn):
        if msg == "cd":
            conn.close(4001, "x")
            print("delivered", conn.deliver_user(conn.user_id, "late"))
            return
        if msg == "sur":
            conn.send("\ud800")
            return
        conn.send(msg)

async def test_rst():
    async with running(H(), transmission_limit=0) as server:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(upgrade_request())
        print(s.recv(4096)[:12])
        s.sendall(client_frame(3, b"") + b"\x00" * 300000)
        await trio.sleep(0.3)
        data = b""
        try:
            while True:
                d = s.recv(65536)
                if not d: print("EOF"); break
                data += d
        except ConnectionResetError as e:
            print("RESET", e)
        print("got", data[:40])
        s.close()

async def test_after_close():
    async with running(H(), transmission_limit=0) as server:
        c = await RawClient.connect(server)
        await c.upgrade()
        await c.send(client_frame(1, b"cd"))
        for _ in range(2):
            print(await c.read_frame())
        await c.aclose()

async def test_declared():
    async with running(H(), max_message_size=1000) as server:
        c = await RawClient.connect(server)
        await c.upgrade()
        await c.send(client_frame(2, b"x" * 10, length=10**6)[:-0] if False else client_frame(2, b"x"*10, length=10**6))
        with trio.move_on_after(1):
            print(await c.read_frame())
        await c.aclose()

async def test_sur():
    async with running(H()) as server:
        c = await RawClient.connect(server)
        await c.upgrade()
        await c.send(client_frame(1, b"sur"))
        with trio.move_on_after(1):
            print(await c.read_frame())
        await c.aclose()
