
const data = JSON.parse(document.getElementById("__NEXT_DATA__").textContent);
const article = data.props.pageProps.article;
const main = document.querySelector("main");
main.innerHTML = "<h1></h1>" + article.paragraphs.map(() => "<p></p>").join("");
main.querySelector("h1").textContent = article.title;
main.querySelectorAll("p").forEach((p, i) => { p.textContent = article.paragraphs[i]; });
