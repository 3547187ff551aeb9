// riverside.js: the browser client of riverside-trio (no dependencies; an ES module).
//
//   import { RiversideClient } from "/riverside.js";
//   const client = new RiversideClient("ws://" + location.host + "/ws");
//   await client.connect();
//   const sum = await client.request("add", [1, 2], { timeout: 5000 });
//   client.onSignal("notice", (data) => console.log(data));
//   client.onSession((session) => console.log("session", session && session.key));
//
// It speaks the JSON envelope: {"$": "req" | "rep" | "err" | "sig" | "restore" |
// "close_session" | "session" | "session_closed", ...}; any other message is a plain one
// (onMessage). When the connection drops and the client did not close it, it reconnects
// with a jittered exponential backoff and restores its session before it counts as open;
// requests made meanwhile wait for it (within their timeout). Pending requests of a dropped
// connection fail with an Error whose code is "connection_closed".

export class RequestError extends Error {
  constructor(code, message) {
    super(message ? `${code}: ${message}` : code);
    this.name = "RequestError";
    this.code = code;
    this.detail = message || "";
  }
}

export class RiversideClient {
  constructor(url, options = {}) {
    this.url = url;
    this.requestTimeout = options.requestTimeout ?? 60000;
    this.reconnect = options.reconnect ?? true;
    this.backoffMin = options.backoffMin ?? 500;
    this.backoffMax = options.backoffMax ?? 30000;
    this.protocols = options.protocols;
    this.session = null;
    this.restoreError = null;
    this.connects = 0;
    this.ws = null;
    this._nextId = 0;
    this._pending = new Map();
    this._requests = new Map();
    this._signals = new Map();
    this._listeners = { message: [], session: [], open: [], close: [] };
    this._ready = false;
    this._waiters = [];
    this._closed = false;
    this._attempt = 0;
  }

  on(event, fn) { this._listeners[event].push(fn); return this; }
  onMessage(fn) { return this.on("message", fn); }
  onSession(fn) { return this.on("session", fn); }
  onSignal(name, fn) { this._signals.set(name, fn); return this; }
  onRequest(name, fn) { this._requests.set(name, fn); return this; }
  get connected() { return this._ready; }

  // Open the first connection; resolves once it is open (and a session restored).
  connect() {
    this._closed = false;
    this._open();
    return this._whenReady(null);
  }

  close(code = 1000, reason = "") {
    this._closed = true;
    if (this.ws) this.ws.close(code, reason);
    this._failWaiters(new RequestError("connection_closed", "the client was closed"));
  }

  send(obj) {
    if (!this._ready) throw new RequestError("connection_closed", "not connected");
    this.ws.send(JSON.stringify(obj));
  }

  signal(name, data = null) { this.send({ $: "sig", name, data }); }

  request(name, data = null, { timeout } = {}) {
    return this._call((id) => ({ $: "req", id, name, data }), timeout);
  }

  async restoreSession(key, { timeout } = {}) {
    const data = await this._call((id) => ({ $: "restore", id, key }), timeout);
    this._setSession(data);
    return data;
  }

  async closeSession({ timeout } = {}) {
    await this._call((id) => ({ $: "close_session", id }), timeout);
    this._setSession(null);
  }

  // ------------------------------------------------------------------ internals

  _emit(event, value) { for (const fn of this._listeners[event]) fn(value); }

  _setSession(session) { this.session = session; this._emit("session", session); }

  _whenReady(deadline) {
    if (this._ready) return Promise.resolve();
    if (this._closed && !this.ws) {
      return Promise.reject(new RequestError("connection_closed", "the client is closed"));
    }
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      if (deadline !== null) {
        waiter.timer = setTimeout(() => {
          this._waiters = this._waiters.filter((w) => w !== waiter);
          reject(new RequestError("timeout", "no connection within the timeout"));
        }, Math.max(0, deadline - Date.now()));
      }
      this._waiters.push(waiter);
    });
  }

  _failWaiters(error) {
    for (const w of this._waiters) { clearTimeout(w.timer); w.reject(error); }
    this._waiters = [];
  }

  async _call(make, timeout) {
    const ms = timeout ?? this.requestTimeout;
    const deadline = Date.now() + ms;
    await this._whenReady(deadline);
    return this._callNow(make, Math.max(0, deadline - Date.now()));
  }

  _callNow(make, ms) {
    const id = ++this._nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RequestError("timeout", `no reply within ${ms} ms`));
      }, ms);
      this._pending.set(id, { resolve, reject, timer });
      try {
        this.ws.send(JSON.stringify(make(id)));
      } catch (e) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(new RequestError("connection_closed", String(e)));
      }
    });
  }

  _open() {
    const ws = this.protocols ? new WebSocket(this.url, this.protocols) : new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => this._opened(ws);
    ws.onmessage = (event) => this._received(ws, event.data);
    ws.onclose = (event) => this._lost(ws, event);
  }

  async _opened(ws) {
    this.connects += 1;
    this._attempt = 0;
    if (this.session) {
      const key = this.session.key;
      this.session = null;
      try {
        this._setSession(await this._callNow((id) => ({ $: "restore", id, key }), this.requestTimeout));
        this.restoreError = null;
      } catch (e) {
        this.restoreError = e;
        this._setSession(null);
      }
    }
    if (this.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
    this._ready = true;
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) { clearTimeout(w.timer); w.resolve(); }
    this._emit("open", this.connects);
  }

  _received(ws, data) {
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    const kind = msg !== null && typeof msg === "object" && !Array.isArray(msg) ? msg.$ : undefined;
    if (kind === undefined) { this._emit("message", msg); return; }
    if (kind === "rep" || kind === "err") {
      const call = this._pending.get(msg.id);
      if (!call) return;
      this._pending.delete(msg.id);
      clearTimeout(call.timer);
      if (kind === "rep") call.resolve(msg.data);
      else call.reject(new RequestError(msg.code, msg.message));
    } else if (kind === "sig") {
      const fn = this._signals.get(msg.name);
      if (fn) fn(msg.data);
    } else if (kind === "req") {
      this._answer(ws, msg);
    } else if (kind === "session") {
      const { $, ...session } = msg;
      this._setSession(session);
    } else if (kind === "session_closed") {
      this._setSession(null);
    }
  }

  async _answer(ws, msg) {
    const fn = this._requests.get(msg.name);
    let reply;
    try {
      if (!fn) throw new RequestError("unknown_name", `no request handler named ${msg.name}`);
      reply = { $: "rep", id: msg.id, data: (await fn(msg.data)) ?? null };
    } catch (e) {
      reply = e instanceof RequestError
        ? { $: "err", id: msg.id, code: e.code, message: e.detail }
        : { $: "err", id: msg.id, code: "internal_error", message: "internal error" };
    }
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(reply));
  }

  _lost(ws, event) {
    if (this.ws !== ws) return;
    this._ready = false;
    this.ws = null;
    const error = new RequestError("connection_closed", `closed: ${event.code} ${event.reason}`);
    for (const call of this._pending.values()) { clearTimeout(call.timer); call.reject(error); }
    this._pending.clear();
    this._emit("close", event);
    if (this._closed || !this.reconnect) { this._closed = true; this._failWaiters(error); return; }
    const delay = Math.min(this.backoffMax, this.backoffMin * 2 ** this._attempt);
    this._attempt += 1;
    setTimeout(() => { if (!this._closed) this._open(); }, delay / 2 + Math.random() * delay / 2);
  }
}
