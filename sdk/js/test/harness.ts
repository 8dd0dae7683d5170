/**
 * What the integration tests share: the real hubbub server, started on a free loopback port
 * over a temporary data directory (killed, restarted, paused at will), users, app tokens, and
 * waiting for conditions with a deadline (never asserting on time).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, openSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import WebSocket from "ws";
import { AuthSession, HubbubClient, type ClientOptions, type WebSocketConstructor } from "../src/index.js";

/** The app tokens' HS256 secret the test servers are configured with (32 bytes or more). */
export const APP_SECRET = "hubbub-sdk-tests-app-secret-0123456789";

export const WS = WebSocket as unknown as WebSocketConstructor;

function hubbubBin(): string {
  const bin = process.env.HUBBUB_BIN;
  if (!bin) throw new Error("HUBBUB_BIN is not set: point it at a hubbub binary (e.g. target/debug/hubbub)");
  return bin;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `condition` until it holds; fails with `what` after `timeoutMs`. */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// Servers still running when the test process exits (a crash, a timeout) are killed with it.
const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const proc of live) proc.kill("SIGKILL");
});

/** A hubbub server process (`hubbub serve`) the test owns. */
export class TestServer {
  readonly url: string;
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private readonly logFile: string;

  private constructor(
    readonly port: number,
    readonly dataDir: string,
    private readonly env: Record<string, string>,
  ) {
    this.url = `http://127.0.0.1:${port}`;
    this.logFile = join(dataDir, "..", `server-${port}.log`);
  }

  /** Starts a server; `env` adds settings (`HUBBUB_AUTH__ACCESS_TTL_S`: "4", ...). */
  static async start(t: TestContext, env: Record<string, string> = {}): Promise<TestServer> {
    const root = mkdtempSync(join(tmpdir(), "hubbub-sdk-"));
    const server = new TestServer(await freePort(), join(root, "data"), {
      HUBBUB_LOG: "warn",
      HUBBUB_AUTH__APP_HMAC_SECRET: APP_SECRET,
      // Every test signs up a few users from one address.
      HUBBUB_AUTH__ATTEMPTS_PER_IP_PER_MINUTE: "6000",
      HUBBUB_AUTH__ATTEMPTS_PER_IP_BURST: "1000",
      ...env,
    });
    t.after(async () => {
      await server.kill("SIGKILL");
      rmSync(root, { recursive: true, force: true });
    });
    await server.spawn();
    return server;
  }

  /** The server's log (stderr and stdout), for failure messages. */
  log(): string {
    try {
      return readFileSync(this.logFile, "utf8").slice(-4000);
    } catch {
      return "";
    }
  }

  private async spawn(): Promise<void> {
    const out = openSync(this.logFile, "a");
    const proc = spawn(hubbubBin(), ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir], {
      // Only what the test chooses: no HUBBUB_* of the caller's environment.
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...this.env },
      stdio: ["ignore", out, out],
    });
    closeSync(out);
    this.proc = proc;
    live.add(proc);
    proc.once("exit", () => live.delete(proc));
    let gone = false;
    this.exited = new Promise((resolve) => proc.once("exit", () => resolve()));
    void this.exited.then(() => (gone = true));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (gone) throw new Error(`hubbub exited before it was ready:\n${this.log()}`);
      try {
        const response = await fetch(`${this.url}/readyz`);
        if (response.status === 200) return;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) throw new Error(`hubbub was not ready within 30 s:\n${this.log()}`);
      await sleep(50);
    }
  }

  /** Kills the process and waits for it to be gone. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill("SIGCONT");
    proc.kill(signal);
    await this.exited;
    this.proc = undefined;
  }

  /** Starts the server again on the same port and data directory. */
  async restart(): Promise<void> {
    await this.kill("SIGKILL");
    await this.spawn();
  }

  /** SIGSTOP: the process keeps its sockets but answers nothing. Resolves once it is stopped. */
  async pause(): Promise<void> {
    const proc = this.proc;
    if (!proc?.pid) throw new Error("no server process to pause");
    proc.kill("SIGSTOP");
    // The signal is delivered asynchronously: wait until Linux reports the process stopped.
    await waitFor(() => {
      try {
        const stat = readFileSync(`/proc/${proc.pid}/stat`, "utf8");
        return stat.slice(stat.lastIndexOf(")") + 2).startsWith("T");
      } catch {
        return false;
      }
    }, "the server to stop (SIGSTOP)");
  }

  resume(): void {
    this.proc?.kill("SIGCONT");
  }

  /** An app token for user `sub` (signed with APP_SECRET), valid `ttlS` seconds. */
  appToken(sub: string, ttlS = 3600, handle?: string): string {
    const b64 = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
    const nowS = Math.floor(Date.now() / 1000);
    // `jti` makes two tokens minted in one second differ.
    const claims = { sub, exp: nowS + ttlS, iat: nowS, jti: randomUUID(), ...(handle ? { handle } : {}) };
    const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
    return `${body}.${createHmac("sha256", APP_SECRET).update(body).digest("base64url")}`;
  }

  /** Signs up a new user with a unique handle. */
  async signup(prefix: string): Promise<AuthSession> {
    const handle = `${prefix}_${Math.random().toString(36).slice(2, 10)}`.slice(0, 32);
    return AuthSession.signup(this.url, { handle, password: "correct horse battery" });
  }

  /** A client of this server (closed when the test ends). */
  client(t: TestContext, options: Partial<ClientOptions>): HubbubClient {
    const client = new HubbubClient({ url: this.url, WebSocket: WS, ...options });
    t.after(() => client.close());
    return client;
  }
}

type Frame = Record<string, unknown>;

/**
 * A WebSocket (over `ws`) that records what the client sends and the URLs it opens, and lets
 * a test drop frames from the server or cut the connection, to stand in for a network that
 * loses a reply.
 */
export class Spy {
  readonly sent: Frame[] = [];
  readonly received: Frame[] = [];
  readonly urls: string[] = [];
  /** Return false to drop a frame from the server (the socket is passed to cut it). */
  filter: (frame: Frame, socket: { cut(): void }) => boolean = () => true;

  /** The access_token query parameter of every connection opened so far. */
  get tokens(): string[] {
    return this.urls.map((u) => new URL(u).searchParams.get("access_token") ?? "");
  }

  sentOf(type: string): Frame[] {
    return this.sent.filter((f) => f.type === type);
  }

  get WebSocket(): WebSocketConstructor {
    const spy = this;
    const call = (handler: unknown, event: unknown) => {
      if (typeof handler === "function") handler(event);
    };
    return class SpySocket {
      onopen: unknown = null;
      onmessage: unknown = null;
      onclose: unknown = null;
      onerror: unknown = null;
      private readonly ws: WebSocket;
      constructor(url: string) {
        spy.urls.push(url);
        this.ws = new WebSocket(url);
        this.ws.onopen = (e) => call(this.onopen, e);
        this.ws.onerror = (e) => call(this.onerror, e);
        this.ws.onclose = (e) => call(this.onclose, e);
        this.ws.onmessage = (e) => {
          const kept: string[] = [];
          for (const line of String(e.data).split("\n")) {
            if (line.trim() === "") continue;
            const frame = JSON.parse(line) as Frame;
            spy.received.push(frame);
            if (spy.filter(frame, { cut: () => this.ws.terminate() })) kept.push(line);
          }
          if (kept.length > 0) call(this.onmessage, { data: kept.join("\n") });
        };
      }
      get readyState(): number {
        return this.ws.readyState;
      }
      send(data: string): void {
        for (const line of data.split("\n")) if (line.trim() !== "") spy.sent.push(JSON.parse(line) as Frame);
        this.ws.send(data);
      }
      close(code?: number, reason?: string): void {
        this.ws.close(code, reason);
      }
    };
  }
}
