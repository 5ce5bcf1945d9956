// Fixed-window point counters, the model of rate-limiter-flexible as Medplum uses it:
// a window opens at the first consumption and lasts `windowSeconds`; consuming past the budget
// is refused (429 "throttled") until the window ends. Medplum keeps two: "requests" (1 point per
// HTTP request) and "fhirInteractions" (the points of each interaction: COST in repository.mjs).
import { OperationOutcomeError, deepClone, tooManyRequests } from '@medplum/core';

export class PointWindow {
  constructor() {
    this.consumed = 0;
    this.resetAt = 0;
  }

  state(points, windowSeconds, now = Date.now()) {
    if (now >= this.resetAt) {
      this.consumed = 0;
      this.resetAt = now + windowSeconds * 1000;
    }
    return this;
  }

  remaining(points) {
    return Math.max(points - this.consumed, 0);
  }

  secondsToReset(now = Date.now()) {
    return Math.max(0, Math.ceil((this.resetAt - now) / 1000));
  }
}

export class QuotaBook {
  constructor() {
    /** @type {Map<string, PointWindow>} */
    this.windows = new Map();
  }

  clear() {
    this.windows.clear();
  }

  window(key) {
    let w = this.windows.get(key);
    if (!w) {
      w = new PointWindow();
      this.windows.set(key, w);
    }
    return w;
  }
}

/**
 * The quota of one client for one request: consume() throws a 429 OperationOutcomeError once the
 * budget is spent; header() gives the RateLimit header value.
 */
export class QuotaTracker {
  constructor(book, key, label, points, windowSeconds) {
    this.book = book;
    this.key = key;
    this.label = label;
    this.points = points;
    this.windowSeconds = windowSeconds;
    this.touched = false;
  }

  consume(points) {
    const w = this.book.window(this.key).state(this.points, this.windowSeconds);
    this.touched = true;
    if (w.consumed >= this.points) {
      throw this.error(w);
    }
    w.consumed += points;
    if (w.consumed > this.points) {
      throw this.error(w);
    }
  }

  error(w) {
    const outcome = deepClone(tooManyRequests);
    outcome.issue[0].diagnostics = JSON.stringify({
      remainingPoints: w.remaining(this.points),
      msBeforeNext: Math.max(0, w.resetAt - Date.now()),
      consumedPoints: w.consumed,
      limit: this.points,
    });
    return new OperationOutcomeError(outcome);
  }

  /** @returns {string|undefined} e.g. `"fhirInteractions";r=49880;t=60`, once a window is open */
  header() {
    const w = this.book.windows.get(this.key);
    if (!w || (!this.touched && Date.now() >= w.resetAt)) {
      return undefined;
    }
    w.state(this.points, this.windowSeconds);
    return `"${this.label}";r=${w.remaining(this.points)};t=${w.secondsToReset()}`;
  }
}
