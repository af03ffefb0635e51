window.___webpackCompilationHash = '4d1e2f';
