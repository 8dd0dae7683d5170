/**
 * @hubbub/client: the JavaScript/TypeScript SDK of hubbub. `HubbubClient` is the session;
 * `AuthSession` the built-in auth's tokens; the storage adapters keep a web app's place
 * across reloads; the protocol's types are generated from docs/schema.
 */
export { HubbubClient } from "./client.js";
export { CLIENT_CLOSE } from "./options.js";
export type { ClientEvents, ClientOptions, ConnectionState, LifecycleEvents, RequestOptions } from "./options.js";
export { HubbubError, type ClientErrorCode } from "./errors.js";
export { AuthSession, httpBase, httpJson, login, refresh, revokeAll, signup, wsEndpoint } from "./http.js";
export type { AuthSessionOptions, HttpOptions, StoredTokens } from "./http.js";
export { jwtExpiry, type GetToken, type TokenInput, type TokenReason } from "./token.js";
export { localStorageAdapter, memoryStorage, parseState } from "./storage.js";
export type { OutboxRecord, PersistedState, StateStorage } from "./storage.js";
export type { MessageFields, PendingMessage } from "./outbox.js";
export type { Typing, TypingOptions } from "./typing.js";
export type { PresenceHelper } from "./presence.js";
export { backoffDelay, type BackoffOptions } from "./backoff.js";
export { OffsetInbox, SeqInbox } from "./inbox.js";
export type { FetchLike, WebSocketConstructor, WebSocketLike, WebStorageLike } from "./env.js";
export type * from "./protocol.js";
