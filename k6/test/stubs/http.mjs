// k6/http: answers with whatever `respond` returns; records each request.
export const requests = [];
export const stub = {
  respond: (method, url, body) => ({ status: 202, body: JSON.stringify({ id: JSON.parse(body).id, status: 'pending' }) }),
};
function request(method, url, body, params) {
  requests.push({ method, url, body, params });
  return stub.respond(method, url, body);
}
export default {
  post: (url, body, params) => request('POST', url, body, params),
  put: (url, body, params) => request('PUT', url, body, params),
};
