/**
 * The wire types of the hubbub protocol, generated from docs/schema/*.json by
 * scripts/gen.mjs (json-schema-to-typescript). Do not edit: run `npm run gen`.
 */
export {};
