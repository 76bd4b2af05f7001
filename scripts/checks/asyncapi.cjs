// Parses an AsyncAPI document with @asyncapi/parser (which also validates it against
// the AsyncAPI 3 specification and lints it) and, given records, validates each one
// against the message its `ce_type` header names: headers, key and JSON payload,
// with the schemas as the parser resolved them, and the headers and key against the
// payload they repeat.
//
//   node asyncapi.cjs DOCUMENT [RECORDS.ndjson]
//
// A record is one JSON line: {"partition": 0, "offset": 0, "key": "…", "headers":
// {"ce_id": "…", …}, "value": "…"}; a header or key that is not UTF-8 is null.
// NODE_MODULES names the directory the pinned packages are installed in.
'use strict';

const fs = require('fs');
const path = require('path');

const modules = process.env.NODE_MODULES;
const load = (name) => require(modules ? path.join(modules, name) : name);
const { Parser, fromFile } = load('@asyncapi/parser');
const Ajv = load('ajv').default;
const addFormats = load('ajv-formats').default;

const SEVERITY = ['error', 'warning', 'information', 'hint'];

async function main() {
  const [documentPath, recordsPath] = process.argv.slice(2);
  if (!documentPath) throw new Error('usage: asyncapi.cjs DOCUMENT [RECORDS.ndjson]');
  const { document, diagnostics } = await fromFile(new Parser(), documentPath).parse();
  for (const d of diagnostics) {
    const at = d.range ? `${d.range.start.line + 1}:${d.range.start.character + 1}` : '?';
    console.log(`${documentPath}:${at} ${SEVERITY[d.severity] || d.severity} ${d.code}: ${d.message} (${(d.path || []).join('.')})`);
  }
  const errors = diagnostics.filter((d) => d.severity === 0);
  if (!document || errors.length > 0) {
    console.error(`${documentPath}: ${errors.length} error(s)`);
    process.exit(1);
  }
  const messages = new Map();
  for (const message of document.allMessages()) {
    if (!message.payload() || !message.headers()) throw new Error(`message ${message.id()} has no payload or headers schema`);
    messages.set(message.name(), message);
  }
  console.log(`${documentPath}: valid AsyncAPI ${document.version()}; messages: ${[...messages.keys()].join(', ')}`);
  if (recordsPath) validateRecords(recordsPath, messages);
}

function validateRecords(recordsPath, messages) {
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  const validators = new Map();
  for (const [name, message] of messages) {
    const key = message.bindings().get('kafka')?.value()?.key;
    validators.set(name, {
      headers: ajv.compile(message.headers().json()),
      payload: ajv.compile(message.payload().json()),
      key: key ? ajv.compile(key.json ? key.json() : key) : () => true,
    });
  }
  const lines = fs.readFileSync(recordsPath, 'utf8').split('\n').filter((l) => l.trim());
  const failures = [];
  const seen = {};
  for (const line of lines) {
    const record = JSON.parse(line);
    const where = `partition ${record.partition} offset ${record.offset}`;
    const type = record.headers && record.headers.ce_type;
    const validate = validators.get(type);
    if (!validate) {
      failures.push(`${where}: ce_type ${JSON.stringify(type)} names no message of the document`);
      continue;
    }
    seen[type] = (seen[type] || 0) + 1;
    const check = (what, fn, value) => {
      if (!fn(value)) failures.push(`${where} (${type}) ${what}: ${ajv.errorsText(fn.errors)}`);
    };
    check('headers', validate.headers, record.headers);
    check('key', validate.key, record.key);
    let payload;
    try {
      payload = JSON.parse(record.value);
    } catch (error) {
      failures.push(`${where} (${type}) value is not JSON: ${error.message}`);
      continue;
    }
    check('payload', validate.payload, payload);
    // What the document says in prose: the headers repeat the payload's attributes.
    const agree = { ce_id: payload.id, ce_type: payload.type, ce_source: payload.source, ce_time: payload.time,
      ce_specversion: payload.specversion, 'content-type': payload.datacontenttype,
      rsvp_version: payload.data && String(payload.data.version) };
    for (const [header, expected] of Object.entries(agree)) {
      if (record.headers[header] !== expected) {
        failures.push(`${where} (${type}) header ${header} is ${JSON.stringify(record.headers[header])} but the payload says ${JSON.stringify(expected)}`);
      }
    }
    if (payload.data && record.key !== payload.data.event_id) failures.push(`${where} (${type}) the key is not data.event_id`);
  }
  console.log(`${recordsPath}: ${lines.length} record(s) checked: ${JSON.stringify(seen)}`);
  if (failures.length > 0) {
    for (const failure of failures) console.error(failure);
    console.error(`${failures.length} record(s) do not match ${[...messages.keys()].join('/')}`);
    process.exit(1);
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(2);
});
