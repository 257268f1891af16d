// plasmad's HTTP API, as the board uses it: JSON in, JSON out, errors as ApiError.
// Every write is a JSON POST, so it meets the same guard and validation as any other client's.

export class ApiError extends Error {
  constructor(status, body, method, path) {
    const error = (body && body.error) || {};
    super(error.message || (status ? `${method} ${path}: HTTP ${status}` : "plasmad does not answer"));
    this.status = status;
    this.code = error.code;
    this.field = error.field;
    this.method = method;
    this.path = path;
  }

  // A route this plasmad does not have (an operation of a newer version), as opposed to a thing
  // it does not know: the API's 404 for an unknown route names the method and the path.
  get routeMissing() {
    return (this.status === 404 || this.status === 405) && this.message.startsWith(`${this.method} `);
  }
}

async function request(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    throw new ApiError(0, null, method, path);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, data, method, path);
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body = {}) => request("POST", path, body);

export const enc = encodeURIComponent;
