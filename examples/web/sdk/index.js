/**
 * @hubbub/client: the JavaScript/TypeScript SDK of hubbub. `HubbubClient` is the session;
 * `AuthSession` the built-in auth's tokens; the storage adapters keep a web app's place
 * across reloads; the protocol's types are generated from docs/schema.
 */
export { HubbubClient } from "./client.js";
export { CLIENT_CLOSE } from "./options.js";
export { HubbubError } from "./errors.js";
export { AuthSession, httpBase, httpJson, login, refresh, revokeAll, signup, wsEndpoint } from "./http.js";
export { jwtExpiry } from "./token.js";
export { localStorageAdapter, memoryStorage, parseState } from "./storage.js";
export { backoffDelay } from "./backoff.js";
export { OffsetInbox, SeqInbox } from "./inbox.js";
