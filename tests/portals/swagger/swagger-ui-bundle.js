
window.SwaggerUIBundle = async ({url, dom_id}) => {
  const spec = await (await fetch(url)).json();
  const root = document.querySelector(dom_id);
  const info = document.createElement("div");
  info.className = "info";
  info.innerHTML = "<h2></h2><p></p>";
  info.querySelector("h2").textContent = spec.info.title + " " + spec.info.version;
  info.querySelector("p").textContent = spec.info.description;
  root.appendChild(info);
  for (const [path, operations] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const block = document.createElement("div");
      block.className = "opblock";
      block.innerHTML = "<h3></h3><p></p>";
      block.querySelector("h3").textContent = method.toUpperCase() + " " + path + ": " + operation.summary;
      block.querySelector("p").textContent = operation.description;
      root.appendChild(block);
    }
  }
};
