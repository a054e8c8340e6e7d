"""Generate the labelled content-scoring evaluation set (pages/*.html + labels.tsv).

Every sentence here was written for cipa-proxy; nothing is copied from the web.
Pages are "real-shaped": a site template (navigation, cookie banner, scripts,
styles, comments, footer) around paragraphs drawn from per-topic sentence banks,
5-60 KB each, English and Spanish. Labels: ``adult``, ``gambling`` or ``none``.
The negatives are deliberately hard: sex education, health, biology, art,
gambling law and history, gambling addiction help, news about casinos, betting
and pornography laws, probability lessons.

The banks were written separately from ``rules/phrases/``, but by the same
project: treat the figures as a development set, not a held-out evaluation.

    python tests/data/content_eval/generate.py      # rewrites pages/ and labels.tsv (deterministic)
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- sentence banks

BANKS: dict[str, list[str]] = {
    # ---------------- adult, English
    "adult_tube_en": [
        "Watch thousands of free porn videos in HD, updated every hour.",
        "Hot blonde MILF gets naughty with her neighbor",
        "Amateur couple films their first threesome at home",
        "Busty brunette strips and shows off her big tits",
        "Horny college girl gives a sloppy blowjob in the dorm",
        "Best XXX videos of the week, voted by our members",
        "Free porn tube with the hottest pornstars and amateur sluts",
        "Petite teen model in her first hardcore sex scene",
        "Categories: Amateur, Anal, Big Tits, Blowjob, Creampie, Ebony, Lesbian, MILF, Threesome",
        "Download full-length porn movies in 4K with a premium account.",
        "Naughty stepsister caught on hidden cam",
        "Wild gangbang party ends with a messy cumshot compilation",
        "Sexy redhead masturbates with her favorite dildo",
        "Most viewed sex videos today",
        "Upload your own homemade porn and earn money.",
        "Deepthroat queen takes on three guys",
        "Horny housewife gets fucked hard on the kitchen table",
        "Trending searches: milf, teen, lesbian, squirting, bdsm, hentai",
    ],
    "adult_cam_en": [
        "Live sex cams with thousands of cam girls online right now.",
        "Start a private show with your favorite webcam model.",
        "Tip tokens to make her strip, dance and play with her toys.",
        "Join free and chat with naked girls from around the world.",
        "New models online: hot MILFs, couples, and college camgirls.",
        "Our webcam girls are waiting for you in HD.",
        "Buy 200 tokens and get 50 bonus tokens for your first private show.",
        "Spy on private shows and watch live sex for free.",
        "She goes fully nude when the goal of 500 tokens is reached.",
    ],
    "adult_escort_en": [
        "Find local escorts and hookups near you tonight.",
        "Verified escorts available for incall and outcall, discreet service guaranteed.",
        "Browse nude pics and private videos of independent models.",
        "Horny singles in your area want to meet now, no strings attached.",
        "See leaked nudes and sexy selfies from real girls next door.",
        "Sexy Latina escort, 24, available tonight, send a message for rates.",
    ],
    "adult_story_en": [
        "Read the hottest erotic stories written by our members.",
        "She unbuttoned her blouse slowly and pulled him onto the bed, wet and horny.",
        "Her orgasm came in waves as he licked her pussy.",
        "Rated: explicit. This erotic story contains graphic sex between consenting adults.",
        "Top erotic stories this week: lesbian, cheating wife, office romance, group sex.",
        "He pushed his cock deep inside her while she moaned his name.",
    ],
    "adult_gate_en": [
        "This website contains sexually explicit material.",
        "You must be 18 years or older to enter this site.",
        "By entering you confirm that you are at least 18 years of age and that viewing adult content is legal where you live.",
        "18 U.S.C. 2257 Record Keeping Requirements Compliance Statement.",
        "Parents: protect your children from adult content with parental control software.",
        "Enter | Leave",
    ],
    # ---------------- adult, Spanish
    "adult_tube_es": [
        "Miles de videos porno gratis en HD, actualizados cada día.",
        "Madura caliente se folla al vecino en la cocina",
        "Jovencita tetona hace una mamada increíble",
        "Los mejores videos xxx de la semana, elegidos por nuestros usuarios",
        "Porno casero de parejas reales grabado en casa",
        "Chicas desnudas y culonas bailando para la cámara",
        "Actriz porno latina en su escena de sexo duro más salvaje",
        "Categorías: amateur, anal, tetonas, maduras, lesbianas, tríos, caseros",
        "Descarga películas porno completas con tu cuenta premium.",
        "Putas cachondas follando sin parar",
        "Videos de sexo anal y sexo duro sin censura",
        "Búsquedas populares: porno gratis, maduras, colegialas, sexo en vivo",
    ],
    "adult_cam_es": [
        "Sexo en vivo con miles de chicas webcam conectadas ahora.",
        "Abre un show privado con tu modelo favorita.",
        "Chatea gratis con chicas desnudas de todo el mundo.",
        "Regístrate gratis y mira cámaras de sexo en HD.",
        "Compra tokens y haz que se desnude para ti.",
    ],
    "adult_gate_es": [
        "Este sitio contiene material sexual explícito.",
        "Debes ser mayor de 18 años para entrar.",
        "Al entrar confirmas que eres mayor de edad y que ver contenido para adultos es legal en tu país.",
        "Solo para adultos. Entrar | Salir",
    ],
    # ---------------- gambling, English
    "casino_en": [
        "Claim your welcome bonus of up to $1,000 plus 200 free spins on your first deposit.",
        "Play over 2,000 online slots, live roulette, blackjack and baccarat.",
        "New players get 50 free spins with no deposit required.",
        "Wagering requirements of 35x apply to bonus funds before withdrawal.",
        "Our live dealer tables run 24/7 with real croupiers streaming in HD.",
        "Hit the progressive jackpot on Mega Fortune Reels and win millions.",
        "Instant withdrawals to your e-wallet, usually within one hour.",
        "Minimum deposit $10. Accepted payment methods: Visa, Mastercard, Skrill, Bitcoin.",
        "Play now and spin the reels on our newest slot games.",
        "Licensed by the Malta Gaming Authority. 18+ Please gamble responsibly.",
        "Join the VIP club for cashback, faster withdrawals and a personal account manager.",
        "Top games this week: Book of Gold, Starlight Princess, Lightning Roulette, Crazy Time.",
        "Every slot shows its return to player (RTP) percentage and number of paylines.",
        "Use bonus code SPIN100 to double your first deposit.",
        "Win real money from your phone with the casino app.",
    ],
    "sportsbook_en": [
        "Get the best odds on the Premier League, NFL and NBA.",
        "Bet now: Chiefs -3.5 at -110, over/under 47.5 points.",
        "Build your own bet with Bet Builder and combine markets in one match.",
        "Odds boost of the day: Manchester City to win and both teams to score, now 4/1.",
        "Live betting on every tennis match with cash out available.",
        "Place your bets before kickoff and watch the live stream.",
        "New customers: bet $5, get $150 in bonus bets.",
        "Moneyline, point spread and totals for every game tonight.",
        "Accumulator tips for Saturday: four-fold paying over 12/1.",
        "Our sportsbook offers in-play betting on more than 30 sports.",
        "Parlay insurance: if one leg loses, get your stake back as a free bet.",
        "Deposit with Apple Pay and start wagering in seconds.",
        "18+ Gamble responsibly. BeGambleAware.org",
    ],
    "poker_en": [
        "Join thousands of players at the biggest online poker site.",
        "Daily tournaments with guaranteed prize pools and freerolls for new players.",
        "Get 30% rakeback every week and climb the VIP ladder.",
        "Texas Hold'em, Omaha and Sit & Go tables at every stake.",
        "Make your first deposit and receive a 100% bonus up to $600.",
        "Download the poker client and play for real money in minutes.",
    ],
    "sweeps_en": [
        "Play free social casino games and redeem Sweeps Coins for cash prizes.",
        "Get 100,000 Gold Coins and 2 free Sweeps Coins when you sign up.",
        "No purchase necessary. Void where prohibited.",
        "Our sweepstakes casino features hundreds of slots and fish games.",
        "Redeem your winnings through bank transfer once you reach 100 Sweeps Coins.",
    ],
    "tips_en": [
        "Our expert betting tips have returned a 12% profit this season.",
        "Today's best odds comparison from ten bookmakers.",
        "Free tips for the Champions League: back the draw at 3.40.",
        "Join our tipster Telegram channel for daily accumulator picks.",
        "Bankroll management is the key to long-term betting profit.",
    ],
    "crypto_casino_en": [
        "The number one crypto casino: deposit Bitcoin, Ethereum or USDT instantly.",
        "Provably fair dice, crash and plinko games.",
        "Bitcoin casino bonus: 150% on your first deposit plus 100 free spins.",
        "No KYC, instant withdrawals, play anonymously.",
    ],
    # ---------------- gambling, Spanish
    "casino_es": [
        "Recibe un bono de bienvenida de hasta 500 € y 100 giros gratis en tu primer depósito.",
        "Juega a más de 1.500 tragamonedas, ruleta en vivo y blackjack.",
        "Bono sin depósito de 20 € solo por registrarte.",
        "El mejor casino en línea de México con retiros rápidos.",
        "Depósito mínimo de 10 €. Aceptamos tarjeta, OXXO y transferencia.",
        "Gana dinero real desde tu móvil con nuestra app.",
        "Juega responsablemente. Solo mayores de 18 años.",
        "Tragaperras nuevas cada semana y botes progresivos millonarios.",
        "Crupier en vivo las 24 horas en nuestras mesas de ruleta.",
        "Usa el código promocional GIROS50 y duplica tu primer depósito.",
    ],
    "sportsbook_es": [
        "Las mejores cuotas para la Liga, la Champions y la Liga MX.",
        "Apuesta ahora: Real Madrid gana a cuota 1.85.",
        "Apuestas en vivo en todos los partidos con cash out.",
        "Haz tu apuesta combinada y multiplica tus ganancias.",
        "Casa de apuestas con licencia y pagos en 24 horas.",
        "Pronósticos gratis de nuestros expertos para la jornada.",
        "Nuevos clientes: apuesta 10 € y recibe 30 € en apuestas gratis.",
        "Apuestas deportivas en fútbol, tenis, baloncesto y eSports.",
    ],
    # ---------------- hard negatives: sex education and sexual health
    "sexed_en": [
        "Sex education helps young people make informed, healthy decisions about relationships.",
        "Puberty usually begins between ages 8 and 13 and brings physical and emotional changes.",
        "Consent means that everyone involved freely agrees, every time, and can change their mind.",
        "Condoms are the only contraceptive method that also protects against sexually transmitted infections.",
        "Oral, vaginal and anal sex can all pass on sexually transmitted infections such as chlamydia and HPV.",
        "Many teens see pornography online; it does not show how real relationships or bodies look.",
        "Masturbation is a normal part of sexual development and is not harmful.",
        "Talk to a parent, a school nurse or a doctor if you have questions about your sexual health.",
        "Birth control pills, implants and IUDs are effective ways to prevent pregnancy.",
        "This lesson plan meets the state health curriculum standards for grades 9 and 10.",
        "Students will be able to name the parts of the reproductive system and describe their functions.",
        "Getting tested for STDs is quick, confidential and often free at community clinics.",
        "Sexting and sharing nude photos of anyone under 18 can have serious legal consequences.",
        "Healthy relationships are built on respect, trust and honest communication.",
        "The HPV vaccine is recommended for all preteens at age 11 or 12.",
    ],
    "sexed_es": [
        "La educación sexual integral ayuda a los adolescentes a tomar decisiones informadas.",
        "La pubertad comienza entre los 8 y los 13 años y trae cambios físicos y emocionales.",
        "El consentimiento significa que todas las personas están de acuerdo libremente.",
        "El preservativo es el único método anticonceptivo que protege contra las infecciones de transmisión sexual.",
        "El sexo oral, vaginal y anal puede transmitir infecciones como la clamidia y el VIH.",
        "La pornografía no muestra relaciones ni cuerpos reales.",
        "La masturbación es una parte normal del desarrollo sexual.",
        "Habla con tus padres, con la enfermera de la escuela o con un médico si tienes dudas sobre tu salud sexual.",
        "Las pastillas anticonceptivas, el implante y el DIU previenen el embarazo.",
        "Esta lección forma parte del programa de salud para estudiantes de secundaria.",
        "Hacerse la prueba del VIH es rápido, gratuito y confidencial en los centros de salud.",
        "Compartir fotos desnudas de menores de edad es un delito.",
    ],
    "health_en": [
        "Breast cancer screening with a mammogram is recommended every two years for women over 50.",
        "Common symptoms of a urinary tract infection include burning and frequent urination.",
        "Your gynecologist can help with irregular periods, menstrual pain and contraception.",
        "Erectile dysfunction can be an early sign of heart disease, so talk to your physician.",
        "Prenatal care visits check the health of both the mother and the baby during pregnancy.",
        "Testicular self-exams help detect cancer early; check once a month after a warm shower.",
        "The clinic offers confidential HIV testing and treatment regardless of insurance.",
        "Menopause usually begins between 45 and 55 and may cause hot flashes and sleep problems.",
        "Breastfeeding provides antibodies that protect newborns from infections.",
        "Diagnosis is made by a physical exam and, in some cases, an ultrasound.",
    ],
    "health_es": [
        "La mamografía ayuda a detectar el cáncer de mama en etapas tempranas.",
        "Los síntomas más comunes de la infección urinaria son ardor y ganas frecuentes de orinar.",
        "El ginecólogo puede ayudarte con la menstruación irregular y los métodos anticonceptivos.",
        "El control prenatal protege la salud de la madre y del bebé durante el embarazo.",
        "La lactancia materna protege al recién nacido contra infecciones.",
        "La vacuna contra el virus del papiloma humano se recomienda a los 11 o 12 años.",
        "El diagnóstico se confirma con un examen físico y un análisis de sangre.",
    ],
    "biology_en": [
        "Sexual reproduction combines genetic material from two parents through the fusion of gametes.",
        "Sperm and egg cells each carry 23 chromosomes, half the number found in body cells.",
        "Fertilization usually occurs in the fallopian tube.",
        "Many mammal species have a mating season timed so that young are born in spring.",
        "Some species of fish can change sex during their lifetime.",
        "Meiosis produces four genetically different gametes from one cell.",
        "Flowers contain both male and female reproductive organs in most plant species.",
        "Courtship displays help animals choose a healthy mate.",
    ],
    "art_en": [
        "The nude has been a central subject of Western art since ancient Greek sculpture.",
        "Michelangelo's David, carved between 1501 and 1504, is a masterpiece of Renaissance sculpture.",
        "Titian's Venus of Urbino was painted for the Duke of Urbino in 1538.",
        "The museum's collection includes paintings by Goya, Manet and Modigliani.",
        "Art historians debate how Manet's Olympia challenged the conventions of the academic nude.",
        "Students will compare classical and modern depictions of the human body in this art history unit.",
    ],
    "porn_law_news_en": [
        "Lawmakers passed a bill requiring age verification for websites that host pornography.",
        "The law requires sites where more than a third of the content is adult material to verify users' ages.",
        "Civil liberties groups filed suit, arguing that the age verification law violates the First Amendment.",
        "The Supreme Court agreed to hear the case next term, according to court filings.",
        "Researchers say teens often first encounter porn online before age 13.",
        "Several adult websites blocked access in the state rather than comply with the new legislation.",
        "Advocates for parents said the law is a reasonable step to protect children online.",
    ],
    # ---------------- hard negatives: gambling
    "gambling_law_en": [
        "The Wire Act of 1961 prohibited the use of telephone lines for interstate sports betting.",
        "In 2018 the Supreme Court struck down PASPA in Murphy v. NCAA, allowing states to legalize sports betting.",
        "The Indian Gaming Regulatory Act of 1988 set the framework for casinos on tribal lands.",
        "Most states banned lotteries in the nineteenth century after a series of scandals.",
        "Nevada legalized casino gambling in 1931 during the Great Depression.",
        "The history of gambling law in the United States is a cycle of prohibition and legalization.",
        "The Unlawful Internet Gambling Enforcement Act of 2006 targeted payments to online casinos.",
        "Today more than thirty states have legalized some form of sports wagering, according to the American Gaming Association.",
        "Congress has debated a federal framework for online poker several times without passing one.",
        "The court ruled that the statute did not apply to online poker.",
    ],
    "gambling_law_es": [
        "La Ley del Juego de 2011 reguló por primera vez las apuestas en línea en España.",
        "Durante el siglo XX la lotería fue la única forma de juego legal en muchos países.",
        "El Congreso aprobó una nueva legislación que limita la publicidad de las casas de apuestas.",
        "El tribunal determinó que la regulación de los casinos corresponde a los estados.",
        "La historia del juego en México incluye la prohibición de los casinos en 1938.",
        "Los impuestos sobre el juego generan millones en recaudación cada año.",
    ],
    "addiction_en": [
        "Problem gambling affects about one in a hundred adults.",
        "Gambling disorder is a recognized mental health condition that can be treated.",
        "If gambling is causing problems for you or someone you love, call the national helpline.",
        "Gamblers Anonymous meetings are free and open to anyone who wants to stop gambling.",
        "Warning signs include chasing losses, lying about gambling and borrowing money to bet.",
        "Free spins, deposit bonuses and VIP rewards are designed to keep players coming back.",
        "Self-exclusion lets you block yourself from online casinos and betting sites.",
        "Cognitive behavioral therapy is one of the most effective treatments for compulsive gambling.",
        "Recovery is possible, and support groups can help families too.",
        "Young people who see sports betting ads are more likely to start gambling early, researchers found.",
    ],
    "addiction_es": [
        "La ludopatía es una adicción reconocida que tiene tratamiento.",
        "Si el juego te está causando problemas, llama a la línea de ayuda gratuita.",
        "Jugadores Anónimos ofrece grupos de apoyo en todo el país.",
        "Las señales de alerta incluyen mentir sobre el juego y pedir dinero prestado para apostar.",
        "Los bonos de bienvenida y los giros gratis están diseñados para que sigas jugando.",
        "La terapia cognitivo-conductual es eficaz contra la adicción al juego.",
        "Los investigadores advierten que la publicidad de apuestas deportivas atrae a los jóvenes.",
    ],
    "casino_news_en": [
        "The city council approved plans for a new casino resort near the waterfront.",
        "State officials reported that sports betting handle rose 20 percent last year.",
        "The casino is expected to create 1,200 jobs and generate tax revenue for schools.",
        "Opponents worry that the casino will increase problem gambling in the region.",
        "The company reported record revenue from its online casino and sportsbook divisions.",
        "Analysts said the merger would create the largest gaming operator in the country.",
        "The lottery jackpot reached $1.2 billion, the second largest in history.",
        "A study found that lottery ticket sales are highest in low-income neighborhoods.",
        "The league announced a partnership with a betting company despite criticism from parents.",
    ],
    "casino_news_es": [
        "El ayuntamiento aprobó la construcción de un casino junto al puerto.",
        "Las apuestas deportivas crecieron un 20 por ciento el año pasado, según el regulador.",
        "El sorteo de la lotería de Navidad repartió 2.500 millones de euros en premios.",
        "La empresa informó ingresos récord en su división de casinos.",
        "Expertos advierten sobre el aumento de la ludopatía entre los jóvenes.",
    ],
    "math_en": [
        "A fair six-sided die has a probability of one sixth for each outcome.",
        "In American roulette there are 38 pockets, so a bet on a single number pays 35 to 1 but has a negative expected value.",
        "Students will compute the expected value of a lottery ticket and explain why it is negative.",
        "Card counting in blackjack changes the probability of drawing a ten, which is why casinos use many decks.",
        "The gambler's fallacy is the mistaken belief that past outcomes change future probabilities.",
        "Probability, statistics and mathematics help us understand risk.",
        "This lesson uses coins, dice and spinners to explore experimental and theoretical probability.",
    ],
    "math_es": [
        "Un dado de seis caras tiene una probabilidad de un sexto para cada resultado.",
        "En la ruleta la esperanza matemática de cada apuesta es negativa.",
        "Los estudiantes calcularán la probabilidad de ganar la lotería en esta lección de matemáticas.",
        "La falacia del jugador consiste en creer que los resultados pasados cambian los futuros.",
    ],
    # ---------------- ordinary pages
    "news_en": [
        "The school board voted to extend the academic year by five days.",
        "Heavy rain is expected across the region through Thursday.",
        "The team won against all odds, coming back from a 20-point deficit.",
        "Local farmers say the harvest was the best in a decade.",
        "The new library branch opens on Saturday with a reading event for children.",
        "City officials announced road repairs on Main Street starting next week.",
        "The museum will host a free exhibit on the history of the railroad.",
        "Scientists discovered a new species of frog in the rainforest.",
    ],
    "news_es": [
        "El consejo escolar aprobó ampliar el calendario académico.",
        "Se esperan lluvias intensas en la región hasta el jueves.",
        "El equipo ganó contra todo pronóstico en el último minuto.",
        "La nueva biblioteca abre el sábado con actividades para niños.",
        "Científicos descubrieron una nueva especie de rana en la selva.",
        "Feliz año nuevo a todas las familias de nuestra escuela.",
    ],
    "recipe_en": [
        "Preheat the oven to 350 degrees and grease a baking pan.",
        "Mix the flour, sugar and baking soda in a large bowl.",
        "Add the eggs one at a time, beating well after each.",
        "Bake for 25 minutes or until a toothpick comes out clean.",
        "This recipe makes a dozen muffins and freezes well.",
    ],
}

# Words shared by every site template (navigation, cookie banners, footers) in each language.
CHROME = {
    "en": {
        "nav": ["Home", "About us", "Contact", "Blog", "Help", "Sign in", "Register", "Search"],
        "cookie": "We use cookies to improve your experience and analyse traffic. By continuing you accept our cookie policy.",
        "footer": "Privacy policy | Terms of service | Accessibility | Sitemap | © 2025 All rights reserved.",
        "related": "Related articles",
        "comments": "Comments",
        "filler": [
            "Sign up for our newsletter to get the latest updates in your inbox.",
            "Follow us on social media for more.",
            "Share this page with your friends.",
            "Posted on March 3 by the editorial team.",
            "Read more",
            "Load more",
            "Customer support is available around the clock by chat and email.",
            "Download our app for iOS and Android.",
        ],
    },
    "es": {
        "nav": [
            "Inicio",
            "Quiénes somos",
            "Contacto",
            "Blog",
            "Ayuda",
            "Entrar",
            "Registrarse",
            "Buscar",
        ],
        "cookie": "Usamos cookies para mejorar tu experiencia y analizar el tráfico. Al continuar aceptas nuestra política de cookies.",
        "footer": "Política de privacidad | Términos y condiciones | Accesibilidad | Mapa del sitio | © 2025 Todos los derechos reservados.",
        "related": "Artículos relacionados",
        "comments": "Comentarios",
        "filler": [
            "Suscríbete a nuestro boletín para recibir las últimas novedades.",
            "Síguenos en redes sociales.",
            "Comparte esta página con tus amigos.",
            "Publicado el 3 de marzo por la redacción.",
            "Leer más",
            "Cargar más",
            "Atención al cliente disponible las 24 horas por chat y correo.",
            "Descarga nuestra app para iOS y Android.",
        ],
    },
}

# (label, language, main banks, optional extra banks, number of pages, site names)
KINDS: list[tuple[str, str, str, list[str], list[str], int, list[str]]] = [
    (
        "adult",
        "en",
        "tube",
        ["adult_tube_en"],
        ["adult_gate_en"],
        14,
        ["HotTube", "XVidz", "PornPalace", "SinFlix"],
    ),
    ("adult", "en", "cam", ["adult_cam_en"], ["adult_gate_en"], 8, ["CamLounge", "LiveBabes"]),
    (
        "adult",
        "en",
        "escort",
        ["adult_escort_en"],
        ["adult_gate_en"],
        5,
        ["NightDates", "LocalHeat"],
    ),
    ("adult", "en", "story", ["adult_story_en"], ["adult_gate_en"], 6, ["SteamyTales"]),
    ("adult", "en", "gate", ["adult_gate_en"], ["adult_tube_en"], 4, ["Enter18"]),
    (
        "adult",
        "es",
        "tube",
        ["adult_tube_es"],
        ["adult_gate_es"],
        12,
        ["PornoMax", "VideosCalientes"],
    ),
    ("adult", "es", "cam", ["adult_cam_es"], ["adult_gate_es"], 6, ["CamChicas"]),
    (
        "gambling",
        "en",
        "casino",
        ["casino_en"],
        [],
        14,
        ["LuckySpin Casino", "GoldReels", "Vegas Royale"],
    ),
    ("gambling", "en", "sportsbook", ["sportsbook_en"], [], 10, ["BetKing", "OddsHub"]),
    ("gambling", "en", "poker", ["poker_en"], ["casino_en"], 4, ["AllInPoker"]),
    ("gambling", "en", "sweeps", ["sweeps_en"], ["casino_en"], 4, ["FunCoins Social Casino"]),
    ("gambling", "en", "tips", ["tips_en"], ["sportsbook_en"], 4, ["SureTips"]),
    ("gambling", "en", "crypto", ["crypto_casino_en"], ["casino_en"], 4, ["SatoshiSpins"]),
    ("gambling", "es", "casino", ["casino_es"], [], 10, ["Casino Sol", "GiroLoco"]),
    ("gambling", "es", "sportsbook", ["sportsbook_es"], [], 8, ["ApuestaYa", "CuotasMX"]),
    (
        "none",
        "en",
        "sexed",
        ["sexed_en"],
        ["health_en"],
        14,
        ["TeenHealth Source", "District Health Ed"],
    ),
    ("none", "es", "sexed", ["sexed_es"], ["health_es"], 10, ["Salud Joven"]),
    ("none", "en", "health", ["health_en"], ["sexed_en"], 10, ["Family Clinic", "HealthWise"]),
    ("none", "es", "health", ["health_es"], [], 6, ["Clínica Familiar"]),
    ("none", "en", "biology", ["biology_en"], [], 8, ["BioLearn"]),
    ("none", "en", "art", ["art_en"], [], 5, ["Art History Hub"]),
    (
        "none",
        "en",
        "porn_law_news",
        ["porn_law_news_en"],
        ["news_en"],
        8,
        ["Daily Herald", "Capitol Report"],
    ),
    ("none", "en", "gambling_law", ["gambling_law_en"], [], 10, ["LawHistory", "Civics Online"]),
    ("none", "es", "gambling_law", ["gambling_law_es"], [], 6, ["Historia del Derecho"]),
    (
        "none",
        "en",
        "addiction",
        ["addiction_en"],
        [],
        10,
        ["Gambling Help Network", "Recovery Now"],
    ),
    ("none", "es", "addiction", ["addiction_es"], [], 6, ["Ayuda Ludopatía"]),
    (
        "none",
        "en",
        "casino_news",
        ["casino_news_en"],
        ["news_en"],
        10,
        ["Metro Times", "Business Wire Daily"],
    ),
    ("none", "es", "casino_news", ["casino_news_es"], ["news_es"], 6, ["El Diario"]),
    ("none", "en", "math", ["math_en"], [], 8, ["MathClass"]),
    ("none", "es", "math", ["math_es"], [], 4, ["Matemáticas Fácil"]),
    ("none", "en", "news", ["news_en"], ["recipe_en"], 6, ["Town Crier"]),
    ("none", "es", "news", ["news_es"], [], 4, ["Noticias Locales"]),
]

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222}header,footer{background:#f4f4f4;padding:1em}
.card{display:inline-block;width:240px;margin:8px;vertical-align:top}.thumb{width:240px;height:135px;background:#ccc}
nav a{margin-right:1em}.cookie{position:fixed;bottom:0;background:#333;color:#fff;padding:1em}
"""

SCRIPT = """
window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}gtag('js',new Date());
var cfg={site:"%s",section:"%s",tags:["%s"],adSlots:[1,2,3]};
document.addEventListener('DOMContentLoaded',function(){var b=document.querySelector('.cookie');
if(b&&localStorage.getItem('ok')){b.remove()}});
"""


def _paragraphs(rng: random.Random, banks: list[str], n: int) -> list[str]:
    pool = [s for b in banks for s in BANKS[b]]
    return [rng.choice(pool) for _ in range(n)]


def page(
    rng: random.Random,
    label: str,
    lang: str,
    kind: str,
    main: list[str],
    extra: list[str],
    site: str,
) -> str:
    chrome = CHROME[lang]
    n_main = rng.randint(3, 12)
    body_sentences = _paragraphs(rng, main, n_main)
    if extra and rng.random() < 0.6:
        body_sentences += _paragraphs(rng, extra, rng.randint(1, 3))
    rng.shuffle(body_sentences)
    title = body_sentences[0].rstrip(".")[:70]
    nav = "".join(f'<a href="/{w.lower().replace(" ", "-")}">{w}</a>' for w in chrome["nav"])
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{lang}"><head><meta charset="utf-8"><title>{title} | {site}</title>',
        f'<meta name="description" content="{body_sentences[-1]}">',
        f"<style>{STYLE}</style>",
        # scripts carry words that are never shown: they must not score
        f"<script>{SCRIPT % (site, kind, kind)}</script>",
        f'<script type="application/ld+json">{{"@type":"WebSite","name":"{site}"}}</script>',
        "</head><body>",
        f"<header><b>{site}</b><nav>{nav}</nav></header><main>",
    ]
    layout = rng.choice(["article", "cards", "mixed"])
    if layout in ("cards", "mixed") and label != "none":
        for s in body_sentences[: max(3, len(body_sentences) // 2)]:
            parts.append(
                f'<div class="card"><a href="/v/{rng.randrange(10**6)}"><div class="thumb" title="{s[:60]}"></div>'
                f"<span>{s}</span></a><small>{rng.randint(1, 59)}:{rng.randint(10, 59)} · {rng.randint(1, 999)}K</small></div>"
            )
        body_sentences = body_sentences[len(body_sentences) // 2 :]
    parts.append(f"<article><h1>{title}</h1>")
    for i in range(0, len(body_sentences), 3):
        parts.append("<p>" + " ".join(body_sentences[i : i + 3]) + "</p>")
    parts.append("</article>")
    # boilerplate and neutral filler make the sizes real (5-60 KB) without adding evidence
    parts.append(f"<aside><h2>{chrome['related']}</h2><ul>")
    for _ in range(rng.randint(5, 40)):
        parts.append(
            f'<li><a href="/p/{rng.randrange(10**6)}">{rng.choice(chrome["filler"])}</a></li>'
        )
    parts.append(f"</ul><h2>{chrome['comments']}</h2>")
    for _ in range(rng.randint(0, 30)):
        parts.append(
            f'<div class="comment"><b>user{rng.randrange(9999)}</b> <p>{rng.choice(chrome["filler"])}</p></div>'
        )
    parts.append("</aside></main>")
    parts.append(f'<div class="cookie">{chrome["cookie"]}</div>')
    parts.append(f"<footer>{chrome['footer']}</footer>")
    parts.append("<!-- " + " ".join(rng.choice(chrome["filler"]) for _ in range(10)) + " -->")
    parts.append(f"<script>{SCRIPT % (site, kind, kind) * rng.randint(1, 30)}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def generate() -> list[dict[str, str]]:
    """The whole labelled set, in memory and deterministic: ``file, label, language, kind, html``.

    Tests and the benchmark call this instead of reading committed copies.
    """
    rng = random.Random(20250310)
    rows = []
    n = 0
    for label, lang, kind, main_banks, extra, count, sites in KINDS:
        for i in range(count):
            n += 1
            rows.append(
                {
                    "file": f"{n:03d}-{label}-{lang}-{kind}.html",
                    "label": label,
                    "language": lang,
                    "kind": kind,
                    "html": page(rng, label, lang, kind, main_banks, extra, sites[i % len(sites)]),
                }
            )
    return rows


def main() -> None:
    """Write the pages out for a person to read (pages/*.html + labels.tsv, not committed)."""
    out = HERE / "pages"
    out.mkdir(exist_ok=True)
    rows = generate()
    for row in rows:
        (out / row["file"]).write_text(row["html"], encoding="utf-8")
    lines = [
        "file\tlabel\tlanguage\tkind",
        *(f"{r['file']}\t{r['label']}\t{r['language']}\t{r['kind']}" for r in rows),
    ]
    (HERE / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(rows)} pages in {out}")


if __name__ == "__main__":
    main()
