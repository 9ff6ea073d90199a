const stubs = { k6: 'k6.mjs', 'k6/http': 'http.mjs', 'k6/execution': 'execution.mjs' };

export async function resolve(specifier, context, nextResolve) {
  if (Object.hasOwn(stubs, specifier)) {
    return { url: new URL(`./stubs/${stubs[specifier]}`, import.meta.url).href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
