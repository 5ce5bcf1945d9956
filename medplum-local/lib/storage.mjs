// Storage: attachment urls as Medplum 5 treats them (packages/server/src/fhir/rewrite.ts, storage/presign.ts,
// storage/routes.ts). A resource stores `Binary/<id>`; every FHIR response carries, in its place, a signed URL of the
// Binary's storage, `<storageBaseUrl><id>/<versionId>?Expires=<unix seconds, an hour on>&Signature=...`, which
// serves the bytes without a token. On the way in, a storage URL (or any url naming a Binary) becomes `Binary/<id>`.
//
// What counts, as in Medplum's Rewriter: every string property named `url` or `path`, at any depth, outside a Binary
// resource, whose value starts with `Binary/`, `<baseUrl>fhir/R4/Binary/` or the storage base: the id is what
// follows, up to the next `/` (`Binary/<id>/_history/<v>` names a version). Everything else is left as written.
//
// Unlike Medplum, the signature is an HMAC-SHA256 under a key made at start (Medplum: RSA-SHA256 under its signing
// key): nobody but this server checks it, and signing a page of 1000 attachments stays cheap.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

const EXPIRES_SECONDS = 3600; // Medplum: dateLessThan = now + 1 hour

/**
 * A copy of `input` with each attachment url (a string property named `url` or `path`, outside a Binary resource)
 * replaced by `replace(url)`; Medplum's Rewriter.rewriteValue.
 * @param {unknown} input - a resource, Bundle or any JSON value
 * @param {(url: string) => string} replace - the new value of an attachment url
 * @returns {unknown} the copy
 */
function mapUrls(input, replace) {
  if (input === null || typeof input !== 'object') {
    return input;
  }
  if (Array.isArray(input)) {
    return input.map((item) => mapUrls(item, replace));
  }
  if (input.resourceType === 'Binary') {
    return input;
  }
  return Object.fromEntries(
    Object.entries(input).map(([key, value]) => [
      key,
      (key === 'url' || key === 'path') && typeof value === 'string' ? replace(value) : mapUrls(value, replace),
    ])
  );
}

export class Storage {
  constructor() {
    this.key = randomBytes(32);
    this.setBaseUrl('http://localhost/');
  }

  /** The server's base URL (known once it listens): the storage base is `<baseUrl>storage/`, Medplum's default. */
  setBaseUrl(baseUrl) {
    this.fhirBinaryBase = `${baseUrl}fhir/R4/Binary/`;
    this.storageBaseUrl = `${baseUrl}storage/`;
  }

  /** Whether a JSON text may hold a url naming a Binary: when not, nothing in it is rewritten (the fast path). */
  mayName(text) {
    return text.includes('Binary/') || text.includes(this.storageBaseUrl);
  }

  /**
   * The Binary a url names (Medplum's normalizeBinaryUrl): `{id, versionId?}`, or undefined when it names none.
   * @param {string} url - an attachment url
   */
  binaryOf(url) {
    let ref;
    if (url.startsWith(this.fhirBinaryBase)) {
      ref = url.slice(this.fhirBinaryBase.length);
    } else if (url.startsWith(this.storageBaseUrl)) {
      ref = url.slice(this.storageBaseUrl.length);
    } else if (url.startsWith('Binary/')) {
      ref = url.slice('Binary/'.length);
    }
    if (!ref) {
      return undefined;
    }
    const parts = ref.split('/');
    if (parts.length === 3 && parts[1] === '_history') {
      return { id: parts[0], versionId: parts[2] };
    }
    return parts[0] ? { id: parts[0] } : undefined;
  }

  /** A resource to store, each url naming a Binary as `Binary/<id>` (Medplum's RewriteMode.REFERENCE, on writes). */
  toReferences(resource) {
    return mapUrls(resource, (url) => {
      const binary = this.binaryOf(url);
      return binary ? `Binary/${binary.id}` : url;
    });
  }

  /**
   * A response body with each url naming a Binary replaced by `await sign(binary)` (Medplum's
   * RewriteMode.PRESIGNED_URL, on every FHIR response): `sign` is called once per distinct url.
   * @param {unknown} body - the response body
   * @param {(binary: {id: string, versionId?: string}) => Promise<string>} sign - the url to give for a Binary
   */
  async toSigned(body, sign) {
    const signed = new Map();
    mapUrls(body, (url) => {
      const binary = this.binaryOf(url);
      if (binary && !signed.has(url)) {
        signed.set(url, binary);
      }
      return url;
    });
    for (const [url, binary] of signed) {
      signed.set(url, await sign(binary));
    }
    return signed.size ? mapUrls(body, (url) => signed.get(url) ?? url) : body;
  }

  /** The signed URL of a stored Binary's bytes: `<storageBaseUrl><id>/<versionId>?Expires=...&Signature=...`. */
  presign(binary) {
    const url = new URL(`${this.storageBaseUrl}${binary.id}/${binary.meta?.versionId}`);
    url.searchParams.set('Expires', String(Math.floor(Date.now() / 1000) + EXPIRES_SECONDS));
    url.searchParams.set('Signature', this.signature(url.toString()));
    return url.toString();
  }

  signature(text) {
    return createHmac('sha256', this.key).update(text).digest('base64');
  }

  /**
   * Checks a request for a storage URL as Medplum's storage route does, in its order: no Signature → 401
   * "Unauthorized"; no Expires, or past → 410 "URL has expired"; a signature not of this URL → 401 "Invalid
   * signature". The URL is rebuilt from the Host the client sent, as Medplum rebuilds it.
   * @param {URL} url - the requested URL
   * @returns {[number, string] | undefined} the status and text to answer, or undefined when the URL is good
   */
  refusal(url) {
    const signature = url.searchParams.get('Signature');
    if (!signature) {
      return [401, 'Unauthorized'];
    }
    const expires = url.searchParams.get('Expires');
    if (!expires || Math.floor(Date.now() / 1000) > Number.parseInt(expires, 10)) {
      return [410, 'URL has expired'];
    }
    const unsigned = new URL(url);
    unsigned.searchParams.delete('Signature');
    const expected = Buffer.from(this.signature(unsigned.toString()));
    const given = Buffer.from(signature);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      return [401, 'Invalid signature'];
    }
    return undefined;
  }
}
