// LocalRepository: fhir-router's MemoryRepository with the behaviour of a Medplum project added on top:
// server-assigned UUID ids, "Invalid id" / 404 on update, validation against the R4 + Medplum profiles,
// conditional references (replaced by the Reference Medplum makes of the match, its display included),
// checkReferencesOnWrite, per-interaction quota charges, Medplum-style search paging, identifier searches
// matched as Medplum's Postgres matches them, transactions that really roll back (a write log undone on
// failure), indexes for the searches a loader makes by the thousand (identifier, part-of), and attachment urls
// stored as `Binary/<id>` however they were written (a signed storage URL read back and sent again included).
import {
  OperationOutcomeError,
  badRequest,
  createReference,
  createStructureIssue,
  DEFAULT_MAX_SEARCH_COUNT,
  DEFAULT_SEARCH_COUNT,
  formatSearchQuery,
  isUUID,
  notFound,
  parseSearchRequest,
  splitSearchOnComma,
  validateResource,
} from '@medplum/core';
import { MemoryRepository } from '@medplum/fhir-router';
import { randomUUID } from 'node:crypto';

/** Resource types whose `identifier` search parameter is their top-level `identifier` element (indexed). */
const IDENTIFIER_INDEXED = new Set([
  'Communication', 'Patient', 'Practitioner', 'PractitionerRole', 'RelatedPerson', 'Organization', 'CareTeam',
  'Group', 'Device', 'HealthcareService', 'Task', 'Location', 'Endpoint', 'DocumentReference',
]);

/** Points per interaction, as in Medplum's fhirquota.ts. */
export const COST = { read: 1, history: 10, search: 20, write: 100 };

const LOCAL_REFERENCE = /^[A-Z][A-Za-z]+\/[^/?#]+$/;

/**
 * Visits every Reference-shaped object (an object with a string `reference`) in a resource,
 * skipping `meta` and contained resources, with a FHIR-style path and a function that replaces it.
 * @param {object} resource - the resource to walk
 * @param {(ref: object, path: string, replace: (by: object) => void) => void} fn - called for each reference
 */
function forEachReference(resource, fn) {
  const walk = (value, path, replace) => {
    if (Array.isArray(value)) {
      value.forEach((item, i) => walk(item, `${path}[${i}]`, (by) => { value[i] = by; }));
      return;
    }
    if (value === null || typeof value !== 'object') {
      return;
    }
    if (typeof value.reference === 'string') {
      fn(value, path, replace);
    }
    for (const [k, v] of Object.entries(value)) {
      if (k === 'meta' || k === 'contained' || k === 'reference') {
        continue;
      }
      walk(v, `${path}.${k}`, (by) => { value[k] = by; });
    }
  };
  for (const [k, v] of Object.entries(resource)) {
    if (k !== 'meta' && k !== 'contained' && k !== 'resourceType') {
      walk(v, `${resource.resourceType}.${k}`, (by) => { resource[k] = by; });
    }
  }
}

/**
 * An identifier search value as Medplum's Postgres search reads it (packages/server/src/fhir/token.ts,
 * `buildTokenColumnsWhereConditionEqualsAndExact`): values split at unescaped commas (escapes undone), each
 * trimmed; `system|value` split at its FIRST `|` (a value may hold more), an empty system meaning none, an empty
 * value any; a value alone, any system. Unlike @medplum/core's in-memory matcher, case-sensitive (Medplum indexes
 * identifiers so) and keeping a value's own `|`.
 * @param {string} filterValue - the search value, as the query parser decoded it
 * @returns {{system: string|undefined, value: string}[]} the tokens it asks for (any of them)
 */
function identifierTokens(filterValue) {
  return splitSearchOnComma(filterValue)
    .map((q) => q.trim())
    .map((q) => {
      const at = q.indexOf('|');
      return at < 0 ? { system: undefined, value: q } : { system: q.slice(0, at), value: q.slice(at + 1) };
    });
}

/**
 * A test of whether a resource has an identifier one of `tokens` names, as Medplum's Postgres matches them: exactly
 * (case-sensitive). A token naming both system and value is a set lookup, so a search for n identifiers among n
 * candidates costs n, not n * n.
 */
function identifierMatcher(tokens) {
  const exact = new Set(tokens.filter((t) => t.system !== undefined && t.value).map((t) => `${t.system}|${t.value}`));
  const others = tokens.filter((t) => !(t.system !== undefined && t.value));
  return (resource) => {
    for (const identifier of resource?.identifier ?? []) {
      if (exact.has(`${identifier?.system ?? ''}|${identifier?.value}`)) {
        return true;
      }
      for (const t of others) {
        if (t.system === undefined) {
          if (identifier?.value === t.value) {
            return true;
          }
        } else if (t.system ? identifier?.system === t.system : !identifier?.system) {
          return true; // (a token `system|` with no value: any identifier of that system)
        }
      }
    }
    return false;
  };
}

/** Whether Medplum pages this search by cursor (packages/server/src/fhir/search.ts `canUseCursorLinks`). */
function canUseCursorLinks(searchRequest) {
  return (
    searchRequest.offset === 0 &&
    searchRequest.count >= 20 &&
    searchRequest.sortRules?.length === 1 &&
    searchRequest.sortRules[0].code === '_lastUpdated' &&
    !searchRequest.sortRules[0].descending
  );
}

/** Our cursor: "local-<position>" (Medplum's is "2-<instant>-<ids>"; either is opaque to a client). */
function formatCursor(position) {
  return `local-${position}`;
}

function parseCursor(cursor) {
  const m = /^local-(\d+)$/.exec(cursor);
  return m ? Number.parseInt(m[1], 10) : undefined;
}

export class LocalRepository extends MemoryRepository {
  /**
   * @param {object} settings - live server settings (checkReferencesOnWrite is read on every write)
   * @param {import('node:async_hooks').AsyncLocalStorage} contextStore - per-request context
   * @param {{projectId: string}} identity - project the stored resources belong to
   * @param {import('./storage.mjs').Storage} storage - what names a Binary in an attachment url
   */
  constructor(settings, contextStore, identity, storage) {
    super();
    this.settings = settings;
    this.contextStore = contextStore;
    this.identity = identity;
    this.storage = storage;
    /** @type {Map<string, {type: string, id: string, resource: object|undefined, historyLength: number}> | undefined} */
    this.txLog = undefined;
    /** @type {Set<string> | undefined} resources written in the open transaction, checked at commit */
    this.txWritten = undefined;
    this.clearIndexes();
  }

  // ---------------------------------------------------------------- indexes
  //
  // MemoryRepository scans every resource of a type for every search: with 200,000 Communications an
  // identifier search takes seconds. These maps give the candidates of the two searches a loader and
  // `verify` make (identifier=..., part-of=Communication/<id>); the parent's own matcher then runs on
  // the candidates only, so results are exactly what a full scan gives. Entries are only ever added
  // (on every write and on every rollback that restores a resource): a stale candidate is filtered
  // out by the matcher, a missing one cannot happen.

  clearIndexes() {
    /** @type {Map<string, Map<string, Set<string>>>} `${type} ${code}` -> key -> ids */
    this.indexes = new Map();
    /** @type {Map<string, number>} `${type}/${id}` -> first-write order, so candidates keep a scan's order */
    this.order = new Map();
  }

  clear() {
    super.clear();
    this.clearIndexes();
  }

  addToIndex(type, code, key, id) {
    const name = `${type} ${code}`;
    let index = this.indexes.get(name);
    if (!index) {
      index = new Map();
      this.indexes.set(name, index);
    }
    let ids = index.get(key);
    if (!ids) {
      ids = new Set();
      index.set(key, ids);
    }
    ids.add(id);
  }

  indexResource(resource) {
    const { resourceType: type, id } = resource;
    const ref = `${type}/${id}`;
    if (!this.order.has(ref)) {
      this.order.set(ref, this.order.size);
    }
    if (IDENTIFIER_INDEXED.has(type) && Array.isArray(resource.identifier)) {
      for (const identifier of resource.identifier) {
        if (typeof identifier?.value === 'string') {
          this.addToIndex(type, 'identifier', identifier.value.toLowerCase(), id);
        }
      }
    }
    if (type === 'Communication' && Array.isArray(resource.partOf)) {
      for (const partOf of resource.partOf) {
        if (typeof partOf?.reference === 'string') {
          this.addToIndex(type, 'part-of', partOf.reference, id);
        }
      }
    }
  }

  /** The ids a filter can match, from an index; undefined when no index answers it (then: a full scan). */
  candidatesOf(type, filter) {
    if (filter.operator !== undefined && filter.operator !== 'eq') {
      return undefined;
    }
    const index = this.indexes.get(`${type} ${filter.code}`) ?? (this.indexed(type, filter.code) ? new Map() : undefined);
    if (!index) {
      return undefined;
    }
    const ids = new Set();
    for (const value of splitSearchOnComma(filter.value)) {
      let key;
      if (filter.code === 'identifier') {
        const at = value.indexOf('|');
        key = (at < 0 ? value : value.slice(at + 1)).trim().toLowerCase();
        if (!key) {
          return undefined; // `system|`: every value of a system, not indexed
        }
      } else {
        if (!value.includes('/')) {
          return undefined; // a bare id matches any reference ending in it
        }
        key = value;
      }
      for (const id of index.get(key) ?? []) {
        ids.add(id);
      }
    }
    return ids;
  }

  indexed(type, code) {
    return (code === 'identifier' && IDENTIFIER_INDEXED.has(type)) || (code === 'part-of' && type === 'Communication');
  }

  /** Whether a filter is an identifier search this repository matches itself, as Medplum does (`identifierTokens`). */
  isIdentifierFilter(type, filter) {
    return filter.code === 'identifier' && IDENTIFIER_INDEXED.has(type) &&
      (filter.operator === undefined || filter.operator === 'eq');
  }

  searchSync(searchRequest) {
    const type = searchRequest.resourceType;
    const all = this.resources.get(type);
    let candidates;
    const rest = [];
    for (const filter of searchRequest.filters ?? []) {
      let found = this.candidatesOf(type, filter);
      if (this.isIdentifierFilter(type, filter)) {
        const matches = identifierMatcher(identifierTokens(filter.value));
        found = [...(found ?? all?.keys() ?? [])].filter((id) => matches(all?.get(id)));
        found = new Set(candidates ? found.filter((id) => candidates.has(id)) : found);
        candidates = found;
        continue; // matched here: the parent's matcher (case-insensitive, cutting a value at its `|`) never sees it
      }
      rest.push(filter);
      if (found && (!candidates || found.size < candidates.size)) {
        candidates = found;
      }
    }
    if (!candidates || !all) {
      return super.searchSync({ ...searchRequest, filters: rest });
    }
    const ordered = [...candidates]
      .filter((id) => all.has(id))
      .sort((a, b) => this.order.get(`${type}/${a}`) - this.order.get(`${type}/${b}`));
    // the parent's matcher, paging and sorting, on the candidates alone (searchSync is synchronous:
    // nothing else runs while the subset stands in for the whole)
    this.resources.set(type, new Map(ordered.map((id) => [id, all.get(id)])));
    try {
      return super.searchSync({ ...searchRequest, filters: rest });
    } finally {
      this.resources.set(type, all);
    }
  }

  // ---------------------------------------------------------------- quota

  /** Charges quota points for the current request's client, if quota is on. Throws 429 when spent. */
  charge(kind, times = 1) {
    const ctx = this.contextStore.getStore();
    ctx?.quota?.consume(COST[kind] * Math.max(times, 1));
  }

  /**
   * Runs a top-level repository interaction, charging it once: interactions that call other
   * interactions internally (patch -> read + update) are not charged twice.
   */
  async interaction(kind, fn, times = 1) {
    const ctx = this.contextStore.getStore();
    if (!ctx || ctx.inInteraction) {
      return fn();
    }
    ctx.inInteraction = true;
    try {
      this.charge(kind, times);
      return await fn();
    } finally {
      ctx.inInteraction = false;
    }
  }

  // ---------------------------------------------------------------- writes

  createResource(resource, options, update = false) {
    return this.interaction('write', () => super.createResource(resource, options, update));
  }

  updateResource(resource, options) {
    return this.interaction('write', () => super.updateResource(resource, options));
  }

  patchResource(resourceType, id, patch, options) {
    return this.interaction('write', () => super.patchResource(resourceType, id, patch, options));
  }

  conditionalCreate(resource, search, options) {
    return this.interaction('search', async () => {
      // Medplum runs the search (20 points) and, when nothing matches, the create (100 more)
      const result = await super.conditionalCreate(resource, search, options);
      if (result.outcome?.id === 'created') {
        this.charge('write');
      }
      return result;
    });
  }

  deleteResource(resourceType, id, options) {
    return this.interaction('write', async () => {
      if (!isUUID(id)) {
        throw new OperationOutcomeError(notFound);
      }
      this.logWrite(resourceType, id);
      return super.deleteResource(resourceType, id, options);
    });
  }

  async expungeResources(resourceType, ids) {
    for (const id of ids) {
      this.logWrite(resourceType, id);
    }
    return super.expungeResources(resourceType, ids);
  }

  /**
   * Every create and update of MemoryRepository ends here (createResource, updateResource,
   * conditionalCreate, conditionalUpdate, patch). Adds Medplum's rules before storing.
   */
  createResourceSync(resource, options, update = false) {
    if (!resource || typeof resource !== 'object' || typeof resource.resourceType !== 'string') {
      throw new OperationOutcomeError(badRequest('Missing resourceType'));
    }
    const text = JSON.stringify(resource);
    // Medplum stores each url naming a Binary as `Binary/<id>` (its repo.ts: rewriteAttachments REFERENCE)
    const result = this.storage.mayName(text) ? this.storage.toReferences(JSON.parse(text)) : JSON.parse(text);
    const { resourceType } = result;
    if (update) {
      if (!result.id) {
        throw new OperationOutcomeError(badRequest('Missing id'));
      }
      if (!isUUID(result.id)) {
        throw new OperationOutcomeError(badRequest('Invalid id'));
      }
      // A normal client cannot create by update (Medplum: 404 unless the project allows setting ids)
      if (!this.resources.get(resourceType)?.has(result.id)) {
        throw new OperationOutcomeError(notFound);
      }
    } else {
      // Client-chosen ids are ignored on create; batch processing assigns ids itself (assignedId)
      result.id = options?.assignedId && result.id ? result.id : this.generateId();
    }

    this.replaceConditionalReferences(result);

    const ctx = this.contextStore.getStore();
    const meta = { ...(result.meta ?? {}) };
    delete meta.versionId;
    delete meta.lastUpdated;
    delete meta.author;
    delete meta.project;
    delete meta.compartment;
    meta.project = this.identity.projectId;
    if (ctx?.profile) {
      meta.author = { reference: ctx.profile };
    }
    result.meta = meta;

    validateResource(result);

    if (this.settings.checkReferencesOnWrite) {
      if (this.txWritten) {
        // Medplum checks references pre-commit, so forward references inside a transaction work
        this.txWritten.add(`${resourceType}/${result.id}`);
      } else {
        this.checkReferences(result);
      }
    }

    this.logWrite(resourceType, result.id);
    const stored = super.createResourceSync(result, options, update);
    this.indexResource(stored);
    return stored;
  }

  /**
   * Replaces each conditional reference (`Type?search`) by the Reference @medplum/core's `createReference` makes
   * of the one resource it matches, as Medplum does (packages/server/src/fhir/repo.ts
   * `resolveReplacementReference`): `{reference: Type/id, display}`, the display its own rendering of the match
   * (`getDisplayString`), the whole Reference replaced (the display sent is gone); else 400 (Medplum's wording).
   */
  replaceConditionalReferences(resource) {
    forEachReference(resource, (ref, path, replace) => {
      if (!ref.reference.includes('?')) {
        return;
      }
      this.charge('search');
      const search = parseSearchRequest(ref.reference);
      search.sortRules = undefined;
      search.count = 2;
      search.offset = 0;
      const matches = this.searchSync(search).entry ?? [];
      if (matches.length !== 1) {
        throw new OperationOutcomeError(
          badRequest(
            `Conditional reference '${ref.reference}' ${matches.length ? 'matched multiple' : 'did not match any'} resources`,
            path
          )
        );
      }
      replace(createReference(matches[0].resource));
    });
  }

  /** checkReferencesOnWrite: every local reference must resolve, else 400 "Invalid reference (Not found)". */
  checkReferences(resource) {
    const issues = [];
    forEachReference(resource, (ref, path) => {
      if (ref.reference.startsWith('%') || ref.reference.startsWith('#')) {
        return;
      }
      let found = false;
      if (LOCAL_REFERENCE.test(ref.reference)) {
        const [type, id] = ref.reference.split('/');
        found = Boolean(this.resources.get(type)?.has(id));
      }
      if (!found) {
        issues.push(createStructureIssue(path, 'Invalid reference (Not found)'));
      }
    });
    if (issues.length) {
      throw new OperationOutcomeError({ resourceType: 'OperationOutcome', id: randomUUID(), issue: issues });
    }
  }

  // ---------------------------------------------------------------- transactions

  /** Records the state of a resource before its first change in the open transaction. */
  logWrite(resourceType, id) {
    if (!this.txLog) {
      return;
    }
    const key = `${resourceType}/${id}`;
    if (this.txLog.has(key)) {
      return;
    }
    this.txLog.set(key, {
      type: resourceType,
      id,
      resource: this.resources.get(resourceType)?.get(id),
      historyLength: this.history.get(resourceType)?.get(id)?.length ?? 0,
    });
  }

  rollback(log) {
    for (const entry of [...log.values()].reverse()) {
      const resources = this.resources.get(entry.type);
      if (entry.resource) {
        resources?.set(entry.id, entry.resource);
        this.indexResource(entry.resource);
      } else {
        resources?.delete(entry.id);
      }
      const history = this.history.get(entry.type);
      const versions = history?.get(entry.id);
      if (versions) {
        if (entry.historyLength === 0) {
          history.delete(entry.id);
        } else {
          versions.length = entry.historyLength;
        }
      }
    }
  }

  /**
   * All-or-nothing: writes inside the callback are undone if it throws (or if the pre-commit
   * reference check fails). Requests are serialized by the server, so no other write interleaves.
   */
  async withTransaction(callback) {
    if (this.txLog) {
      return callback(this); // nested: join the outer transaction
    }
    const log = new Map();
    this.txLog = log;
    this.txWritten = new Set();
    try {
      const result = await callback(this);
      for (const key of this.txWritten) {
        const [type, id] = key.split('/');
        const stored = this.resources.get(type)?.get(id);
        if (stored) {
          this.checkReferences(stored);
        }
      }
      return result;
    } catch (err) {
      this.rollback(log);
      throw err;
    } finally {
      this.txLog = undefined;
      this.txWritten = undefined;
    }
  }

  // ---------------------------------------------------------------- reads

  readResource(resourceType, id) {
    return this.interaction('read', async () => {
      if (!id || !isUUID(id)) {
        throw new OperationOutcomeError(notFound);
      }
      return super.readResource(resourceType, id);
    });
  }

  readReferences(references) {
    return this.interaction('read', () => super.readReferences(references), references.length);
  }

  readHistory(resourceType, id) {
    return this.interaction('history', () => super.readHistory(resourceType, id));
  }

  readVersion(resourceType, id, versionId) {
    return this.interaction('read', () => super.readVersion(resourceType, id, versionId));
  }

  /**
   * Search as Medplum answers it: `_count` default 20 (at most 1000), `_offset` paging with
   * self/first/next/previous links, `total` only when `_total` is asked for, fullUrl on entries.
   */
  search(searchRequest) {
    return this.interaction('search', async () => {
      const count = Math.max(
        0,
        Math.min(searchRequest.count ?? DEFAULT_SEARCH_COUNT, DEFAULT_MAX_SEARCH_COUNT)
      );
      const requested = Math.max(0, searchRequest.offset ?? 0);
      const maxOffset = this.settings.maxSearchOffset;
      if (maxOffset !== undefined && requested > maxOffset) {
        throw new OperationOutcomeError(
          badRequest(`Search offset exceeds maximum (got ${requested}, max ${maxOffset})`)
        );
      }
      const cursorAt = searchRequest.cursor ? parseCursor(searchRequest.cursor) : undefined;
      if (searchRequest.cursor && cursorAt === undefined) {
        throw new OperationOutcomeError(badRequest('Invalid cursor'));
      }
      if (cursorAt !== undefined && requested > 0) {
        throw new OperationOutcomeError(badRequest('Cannot use both offset and cursor'));
      }
      const offset = cursorAt ?? requested;
      const request = { ...searchRequest, count, offset, cursor: undefined };
      const bundle = await super.search(request);
      const matched = bundle.total ?? 0;
      const fhirBase = this.contextStore.getStore()?.fhirBase;
      if (fhirBase) {
        for (const entry of bundle.entry ?? []) {
          if (entry.resource?.id) {
            entry.fullUrl = `${fhirBase}${entry.resource.resourceType}/${entry.resource.id}`;
          }
        }
        if (request.resourceType) {
          const link = (rel, off) => ({
            relation: rel,
            url: `${fhirBase}${request.resourceType}${formatSearchQuery({ ...request, offset: off })}`,
          });
          if (canUseCursorLinks({ ...searchRequest, count, offset: requested })) {
            // Medplum pages a search sorted by _lastUpdated ascending by cursor, never capped by maxSearchOffset
            // (its cursor is the next lastUpdated instant; ours the position, which a store in memory keeps)
            const at = (cursor) => ({
              relation: cursor === undefined ? 'first' : 'next',
              url: `${fhirBase}${request.resourceType}${formatSearchQuery({ ...request, offset: 0, cursor })}`,
            });
            bundle.link = [link('self', requested), at(undefined)];
            if (offset + count < matched) {
              bundle.link.push(at(formatCursor(offset + count)));
            }
          } else {
            bundle.link = [link('self', offset), link('first', 0)];
            if (count > 0 && offset + count < matched) {
              bundle.link.push(link('next', offset + count));
            }
            if (offset > 0) {
              bundle.link.push(link('previous', Math.max(0, offset - count)));
            }
          }
        }
      }
      if (searchRequest.total === 'accurate' || searchRequest.total === 'estimate') {
        bundle.total = matched;
      } else {
        delete bundle.total;
      }
      return bundle;
    });
  }
}
