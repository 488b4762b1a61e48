"""A minimal PostgreSQL protocol client for the suite: SCRAM-SHA-256 login, messages built by hand, and replies
read as their type letters, so scenarios can send exactly what a driver like Go's pgx sends."""

import asyncio
import base64
import hashlib
import hmac
import os
import struct


def message(tag, body=b""):
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def parse(name, sql):
    return message(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))


def bind(name, params):
    body = cstr("") + cstr(name) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        data = p.encode()
        body += struct.pack("!i", len(data)) + data
    return message(b"B", body + struct.pack("!H", 0))


def describe_statement(name):
    return message(b"D", b"S" + cstr(name))


def execute():
    return message(b"E", cstr("") + struct.pack("!I", 0))


def sync():
    return message(b"S")


def query(sql):
    return message(b"Q", cstr(sql))


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def send(self, *messages):
        self.writer.write(b"".join(messages))
        await self.writer.drain()

    async def read(self):
        tag = await self.reader.readexactly(1)
        (length,) = struct.unpack("!I", await self.reader.readexactly(4))
        return tag, await self.reader.readexactly(length - 4)

    async def replies(self, error=False):
        """Reads up to ReadyForQuery: the reply type letters (ParameterStatus and notices left out), the rows
        (text columns), or with `error` the SQLSTATE of the ErrorResponse instead of the rows."""
        tags, rows, code = "", [], None
        while True:
            tag, body = await self.read()
            if tag in (b"S", b"N"):
                continue
            tags += tag.decode()
            if tag == b"D":
                rows.append(data_row(body))
            elif tag == b"E":
                code = dict((f[:1], f[1:].decode()) for f in body.split(b"\0") if f).get(b"C")
            elif tag == b"Z":
                return (tags, code) if error else (tags, rows)

    async def reply_tags(self):
        return (await self.replies())[0]

    async def close(self):
        self.writer.write(message(b"X"))
        self.writer.close()


def data_row(body):
    (n,) = struct.unpack("!H", body[:2])
    pos, columns = 2, []
    for _ in range(n):
        (length,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        columns.append(None if length < 0 else body[pos:pos + length].decode())
        pos += max(length, 0)
    return columns


async def connect(host, port, user, password, dbname):
    reader, writer = await asyncio.open_connection(host, port)
    conn = Conn(reader, writer)
    params = cstr("user") + cstr(user) + cstr("database") + cstr(dbname) + b"\0"
    startup = struct.pack("!I", 196608) + params
    writer.write(struct.pack("!I", len(startup) + 4) + startup)
    await scram_login(conn, user, password)
    while (await conn.read())[0] != b"Z":
        pass
    return conn


async def scram_login(conn, user, password):
    tag, body = await conn.read()
    assert tag == b"R" and struct.unpack("!I", body[:4])[0] == 10, f"expected SASL, got {tag} {body[:4]}"
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    await conn.send(message(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
    tag, body = await conn.read()
    server_first = body[4:].decode()
    fields = dict(f.split("=", 1) for f in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
    await conn.send(message(b"p", final))
    for _ in range(2):  # SASLFinal, then AuthenticationOk
        tag, body = await conn.read()
        if tag == b"E":
            raise ConnectionError(body)
