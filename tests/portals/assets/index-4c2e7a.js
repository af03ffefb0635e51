function renderArticle(target, article) {
  const main = document.createElement("main");
  const h1 = document.createElement("h1");
  h1.textContent = article.title;
  main.appendChild(h1);
  for (const text of article.paragraphs) {
    const p = document.createElement("p");
    p.textContent = text;
    main.appendChild(p);
  }
  target.replaceChildren(main);
}

const response = await fetch("/api/articles/firmware.json");
renderArticle(document.getElementById("app"), await response.json());
