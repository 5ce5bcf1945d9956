// Client-credentials login like Medplum's /oauth2/token, with HS256 JWT access tokens signed by a
// key that lives only in this process.
import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** Constant-time string comparison. */
export function safeEqual(a, b) {
  const ha = createHash('sha256').update(String(a)).digest();
  const hb = createHash('sha256').update(String(b)).digest();
  return timingSafeEqual(ha, hb) && String(a).length === String(b).length;
}

/** A stable UUID derived from a string (for the ClientApplication id of a client id). */
export function stableUuid(text) {
  const h = createHash('sha256').update(text).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

export class Auth {
  /**
   * @param {{clientId: string, clientSecret: string}} client
   * @param {string} issuer - base URL, used as `iss`
   * @param {string} projectId
   */
  constructor(client, issuer, projectId) {
    this.client = client;
    this.issuer = issuer;
    this.projectId = projectId;
    this.key = randomBytes(32);
    this.applicationId = stableUuid(`ClientApplication:${client.clientId}`);
  }

  get profile() {
    return `ClientApplication/${this.applicationId}`;
  }

  sign(claims) {
    const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const body = b64url(JSON.stringify(claims));
    const sig = b64url(createHmac('sha256', this.key).update(`${header}.${body}`).digest());
    return `${header}.${body}.${sig}`;
  }

  /** @returns {object|undefined} the claims of a well-signed token (expired or not) */
  verify(token) {
    const parts = String(token).split('.');
    if (parts.length !== 3) {
      return undefined;
    }
    const expected = b64url(createHmac('sha256', this.key).update(`${parts[0]}.${parts[1]}`).digest());
    if (!safeEqual(expected, parts[2])) {
      return undefined;
    }
    try {
      return JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    } catch {
      return undefined;
    }
  }

  checkClient(clientId, clientSecret) {
    if (!clientId || !safeEqual(clientId, this.client.clientId)) {
      return 'Invalid client';
    }
    if (!clientSecret || !safeEqual(clientSecret, this.client.clientSecret)) {
      return 'Invalid secret';
    }
    return undefined;
  }

  /**
   * Handles a token request body (already parsed form fields) and Authorization header.
   * @returns {{status: number, body: object}}
   */
  token(form, authorization, ttlSeconds) {
    let clientId = form.client_id;
    let clientSecret = form.client_secret;
    const basic = parseBasic(authorization);
    if (basic) {
      clientId = basic.id;
      clientSecret = basic.secret;
    }
    const grantType = form.grant_type;
    if (!grantType) {
      return tokenError('invalid_request', 'Missing grant_type');
    }
    if (grantType !== 'client_credentials') {
      return tokenError('unsupported_grant_type', 'Unsupported grant_type');
    }
    if (!clientId) {
      return tokenError('invalid_request', 'Missing client_id');
    }
    if (!clientSecret) {
      return tokenError('invalid_request', 'Missing client_secret');
    }
    const problem = this.checkClient(clientId, clientSecret);
    if (problem) {
      return tokenError('invalid_request', problem);
    }
    const now = Date.now() / 1000;
    const iat = Math.floor(now);
    const loginId = randomUUID();
    const claims = {
      iss: this.issuer,
      sub: this.applicationId,
      client_id: clientId,
      login_id: loginId,
      profile: this.profile,
      scope: 'openid',
      iat,
      exp: now + ttlSeconds, // fractional, so that short test TTLs are exact
    };
    return {
      status: 200,
      body: {
        token_type: 'Bearer',
        access_token: this.sign(claims),
        expires_in: ttlSeconds,
        scope: 'openid',
        project: { reference: `Project/${this.projectId}` },
        profile: { reference: this.profile },
      },
    };
  }

  /**
   * Authenticates a FHIR request.
   * @returns {{ok: true, clientId: string} | {ok: false, expired?: boolean}}
   */
  authenticate(authorization) {
    if (!authorization) {
      return { ok: false };
    }
    const basic = parseBasic(authorization);
    if (basic) {
      return this.checkClient(basic.id, basic.secret) ? { ok: false } : { ok: true, clientId: basic.id };
    }
    const m = /^Bearer\s+(\S+)$/i.exec(authorization);
    if (!m) {
      return { ok: false };
    }
    const claims = this.verify(m[1]);
    if (!claims || claims.client_id !== this.client.clientId) {
      return { ok: false };
    }
    if (typeof claims.exp !== 'number' || Date.now() / 1000 >= claims.exp) {
      return { ok: false, expired: true };
    }
    return { ok: true, clientId: claims.client_id };
  }
}

function tokenError(error, description) {
  return { status: 400, body: { error, error_description: description } };
}

function parseBasic(authorization) {
  const m = /^Basic\s+(\S+)$/i.exec(authorization ?? '');
  if (!m) {
    return undefined;
  }
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) {
    return undefined;
  }
  return { id: decoded.slice(0, colon), secret: decoded.slice(colon + 1) };
}
