// The API reference, rendered from the control plane's own /openapi.json: no script or style
// comes from anywhere else, so the page works without the internet.
"use strict";

const METHODS = ["get", "post", "put", "patch", "delete"];

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function refName(ref) {
  return ref.split("/").pop();
}

// A compact, readable form of a JSON schema; named schemas are links.
function schemaText(schema, depth) {
  if (!schema) return "any";
  if (schema.$ref) return refName(schema.$ref);
  if (depth > 3) return "…";
  if (schema.oneOf || schema.anyOf) {
    return (schema.oneOf || schema.anyOf).map((s) => schemaText(s, depth + 1)).join(" | ");
  }
  if (schema.allOf) return schema.allOf.map((s) => schemaText(s, depth + 1)).join(" & ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (type === "array" || (Array.isArray(schema.type) && schema.type.includes("array"))) {
    return `[${schemaText(schema.items, depth + 1)}]`;
  }
  if (schema.properties) {
    const required = new Set(schema.required || []);
    const fields = Object.entries(schema.properties).map(
      ([name, s]) => `${"  ".repeat(depth + 1)}${name}${required.has(name) ? "" : "?"}: ${schemaText(s, depth + 1)}`,
    );
    return `{\n${fields.join(",\n")}\n${"  ".repeat(depth)}}`;
  }
  return (type || "object") + (schema.format ? ` (${schema.format})` : "");
}

function schemaBlock(schema) {
  const text = schemaText(schema, 0);
  const pre = el("pre", {}, text);
  if (schema && schema.$ref) {
    pre.textContent = "";
    pre.append(el("a", { href: `#schema-${refName(schema.$ref)}` }, refName(schema.$ref)));
  }
  return pre;
}

function operation(path, method, op, id) {
  const section = el("section", { class: "op", id, "data-search": `${method} ${path} ${op.summary || ""} ${op.description || ""}`.toLowerCase() });
  section.append(el("h3", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), " ", path));
  if (op.summary) section.append(el("p", {}, op.summary));
  if (op.description && op.description !== op.summary) section.append(el("p", {}, op.description));
  const params = op.parameters || [];
  if (params.length) {
    const table = el("table", {}, el("caption", {}, "Parameters"),
      el("tr", {}, el("th", { scope: "col" }, "name"), el("th", { scope: "col" }, "in"), el("th", { scope: "col" }, "type"), el("th", { scope: "col" }, "description")));
    for (const p of params) {
      table.append(el("tr", {}, el("td", {}, p.name + (p.required ? "" : "?")), el("td", {}, p.in), el("td", {}, schemaText(p.schema, 0)), el("td", {}, p.description || "")));
    }
    section.append(table);
  }
  const body = op.requestBody && op.requestBody.content && Object.values(op.requestBody.content)[0];
  if (body) section.append(el("h4", {}, "Request body"), schemaBlock(body.schema));
  const responses = Object.entries(op.responses || {});
  if (responses.length) {
    const list = el("dl", {});
    for (const [status, response] of responses) {
      const content = response.content && Object.values(response.content)[0];
      list.append(el("dt", {}, `${status} ${response.description || ""}`), el("dd", {}, content ? schemaBlock(content.schema) : "no body"));
    }
    section.append(el("h4", {}, "Responses"), list);
  }
  return section;
}

function render(doc) {
  const main = document.getElementById("main");
  const toc = document.getElementById("toc");
  main.textContent = "";
  const byTag = new Map();
  let n = 0;
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(path, method, op, `op-${n++}`));
    }
  }
  for (const [tag, sections] of byTag) {
    const heading = `tag-${tag}`;
    main.append(el("h2", { id: heading }, tag));
    const links = el("ul", {});
    for (const section of sections) {
      main.append(section);
      links.append(el("li", {}, el("a", { href: `#${section.id}` }, section.querySelector("h3").textContent)));
    }
    toc.append(el("h2", {}, el("a", { href: `#${heading}` }, tag)), links);
  }
  const schemas = (doc.components && doc.components.schemas) || {};
  main.append(el("h2", { id: "schemas" }, "Schemas"));
  for (const [name, schema] of Object.entries(schemas)) {
    main.append(el("section", { class: "op", id: `schema-${name}` }, el("h3", {}, name), el("pre", {}, schemaText(schema, 0))));
  }
  toc.append(el("h2", {}, el("a", { href: "#schemas" }, "Schemas")));
  document.getElementById("filter").addEventListener("input", (event) => {
    const words = event.target.value.toLowerCase().trim();
    for (const section of main.querySelectorAll("section.op[data-search]")) {
      section.hidden = words !== "" && !section.dataset.search.includes(words);
    }
  });
}

fetch("/openapi.json")
  .then((response) => {
    if (!response.ok) throw new Error(`/openapi.json answered ${response.status}`);
    return response.json();
  })
  .then(render)
  .catch((error) => {
    document.getElementById("status").textContent = `The OpenAPI document could not be read: ${error.message}`;
  });
