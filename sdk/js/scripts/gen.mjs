// Generates src/generated/protocol.ts from the JSON Schemas of the wire (docs/schema/*.json,
// written from the Rust types by `hubbub schema`).
//
//   node scripts/gen.mjs            write the file
//   node scripts/gen.mjs --check    exit 1 if the file is stale (a test runs this)
//
// Every schema document becomes one type named by its title (ClientFrame, ServerFrame,
// AuthResponse, ...), and their `$defs` are merged (a name defined twice must be defined the
// same way). Before compiling, the schemas are given names where they have none, so the
// output has one named type per frame instead of anonymous unions:
// - ClientFrame is ClientFrameId & ClientRequest, the union of `<Type>Request`s
//   (`message.send` -> MessageSendRequest),
// - each variant of ServerFrame is `<Type>Frame` (`message.new` -> MessageNewFrame),
// - each variant of ReplyData is named by the keys it requires (REPLY_NAMES below).
// A `$ref` with a sibling `description` is reduced to the `$ref`: json-schema-to-typescript
// would otherwise emit a copy of the referenced type (Message1, Message2, ...); a `$ref`
// beside properties of its own becomes an `allOf` of both.
import { compile } from "json-schema-to-typescript";
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const schemaDir = resolve(process.env.HUBBUB_SCHEMA_DIR ?? join(root, "../../docs/schema"));
const outFile = join(root, "src/generated/protocol.ts");

/** ReplyData variants, by their sorted required keys. */
const REPLY_NAMES = {
  "conversations": "ConversationListReply",
  "conversation": "ConversationReply",
  "messages,more": "MessageHistoryReply",
  "members,more": "ConversationMembersReply",
  "messages": "MessageSearchReply",
  "message": "MessageSendReply",
  "presence": "PresenceWatchReply",
  "users": "BlockListReply",
  "contact": "ContactSetReply",
  "contacts": "ContactListReply",
  "post": "PostCreateReply",
  "comment": "CommentCreateReply",
  "likes": "LikesReply",
  "computed_ts,items": "TimelineReply",
  "last_seq": "SyncReply",
  "last_offset,more": "ChannelSyncReply",
  "expires_ts": "AuthReply",
  "versions": "MessageVersionsReply",
  "reactions": "ReactionsReply",
  "": "EmptyReply",
};

const pascal = (type) =>
  type
    .split(/[._]/)
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join("");

function dropRefSiblings(node) {
  if (Array.isArray(node)) return node.map(dropRefSiblings);
  if (node === null || typeof node !== "object") return node;
  if (typeof node.$ref === "string" && Object.keys(node).every((k) => ["$ref", "description", "default"].includes(k))) {
    return { $ref: node.$ref };
  }
  if (typeof node.$ref === "string") {
    // A $ref beside its own properties (ServerFrame's `presence`: P's fields and `type`):
    // json-schema-to-typescript keeps only the ref, so make it an explicit intersection.
    const { $ref, title, description, ...rest } = node;
    const named = {};
    if (title !== undefined) named.title = title;
    if (description !== undefined) named.description = description;
    return { ...named, allOf: [{ $ref }, dropRefSiblings(rest)] };
  }
  const out = {};
  for (const [k, v] of Object.entries(node)) out[k] = dropRefSiblings(v);
  return out;
}

function nameVariants(schema, suffix) {
  for (const variant of schema.oneOf ?? []) {
    const type = variant.properties?.type?.const;
    if (typeof type !== "string") throw new Error(`${schema.title}: a variant without a type const`);
    variant.title = pascal(type) + suffix;
  }
}

function nameReplies(replyData) {
  for (const variant of replyData.anyOf) {
    const key = [...(variant.required ?? [])].sort().join(",");
    const name = REPLY_NAMES[key];
    if (!name) {
      throw new Error(`ReplyData has a new variant requiring [${key}]: name it in REPLY_NAMES (scripts/gen.mjs)`);
    }
    variant.title = name;
  }
}

export async function generate() {
  const files = readdirSync(schemaDir).filter((f) => f.endsWith(".json")).sort();
  if (files.length === 0) throw new Error(`no schema in ${schemaDir}`);
  const defs = {};
  const top = {};
  for (const file of files) {
    const schema = JSON.parse(readFileSync(join(schemaDir, file), "utf8"));
    const { $defs = {}, $schema: _ignored, ...body } = schema;
    for (const [name, def] of Object.entries($defs)) {
      if (name in defs && JSON.stringify(defs[name]) !== JSON.stringify(def)) {
        throw new Error(`$defs/${name} differs between schema files (${file})`);
      }
      defs[name] = def;
    }
    if (!body.title) throw new Error(`${file} has no title`);
    top[body.title] = { ...body, description: `${body.description ?? ""}\n\nFrom docs/schema/${file}.` };
  }
  if (top.ClientFrame) {
    // `{"id"?}` and one of the requests: name both halves instead of ClientFrame1 & ClientFrame2.
    const { title, description, oneOf, ...common } = top.ClientFrame;
    const requests = { title: "ClientRequest", description: "Any request, without its id.", oneOf };
    nameVariants(requests, "Request");
    top.ClientFrame = { title, description, allOf: [{ ...common, title: "ClientFrameId" }, requests] };
  }
  if (top.ServerFrame) nameVariants(top.ServerFrame, "Frame");
  if (defs.ReplyData) nameReplies(defs.ReplyData);
  for (const [name, schema] of Object.entries(top)) {
    if (name in defs) throw new Error(`${name} is both a schema file and a $def`);
    defs[name] = schema;
  }
  const combined = dropRefSiblings({
    title: "HubbubSchemas",
    description: "Every document of docs/schema, by title.",
    type: "object",
    properties: Object.fromEntries(Object.keys(top).map((name) => [name, { $ref: `#/$defs/${name}` }])),
    required: Object.keys(top),
    additionalProperties: false,
    $defs: defs,
  });
  const banner =
    "/**\n * The wire types of the hubbub protocol, generated from docs/schema/*.json by\n" +
    " * scripts/gen.mjs (json-schema-to-typescript). Do not edit: run `npm run gen`.\n */";
  return compile(combined, "HubbubSchemas", {
    bannerComment: banner,
    additionalProperties: false,
    unreachableDefinitions: true,
    declareExternallyReferenced: true,
    format: true,
    cwd: schemaDir,
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const text = await generate();
  if (process.argv.includes("--check")) {
    let current = "";
    try {
      current = readFileSync(outFile, "utf8");
    } catch {
      // missing counts as stale
    }
    if (current !== text) {
      console.error(`${outFile} is stale against ${schemaDir}: run \`npm run gen\` in sdk/js`);
      process.exit(1);
    }
    console.log("src/generated/protocol.ts is up to date");
  } else {
    mkdirSync(dirname(outFile), { recursive: true });
    writeFileSync(outFile, text);
    console.log(`wrote ${outFile}`);
  }
}
