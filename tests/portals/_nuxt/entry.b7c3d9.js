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

const payload = JSON.parse(document.getElementById("__NUXT_DATA__").textContent);
const value = i => payload[i];
const article = value(value(value(0).data)["article-scanner"]);
renderArticle(document.querySelector(".page-content"), {
  title: value(article.title),
  paragraphs: value(article.paragraphs).map(value),
});
